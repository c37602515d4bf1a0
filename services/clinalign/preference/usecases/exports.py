"""Use cases of dataset snapshots: CreateSnapshot, GetSnapshot, ListSnapshots and
ExportSnapshot. How records are selected, hashed and rendered lives in ``snapshots``."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from sqlalchemy.orm import Session

from clinalign.common.errors import InvalidArgument
from clinalign.common.pagination import next_token, page_bounds
from clinalign.preference import audit, snapshots
from clinalign.preference.models import SnapshotRow
from clinalign.preference.usecases import Core, Page

JSONL, PARQUET = "jsonl", "parquet"


@dataclass(frozen=True)
class Export:
    """A rendered export: its file in chunks for streaming, the number of records it
    holds and the SHA-256 of the whole file."""

    records: int
    chunks: list[bytes]
    sha256: str


async def create_snapshot(core: Core, principal: str, f: snapshots.Filter) -> SnapshotRow:
    """The snapshot of what ``f`` selects: a new one, or the existing snapshot of the same
    records (same content hash)."""
    f.validate()
    selection = f.normalised()
    row, _ = await core.db.run_write(lambda s: snapshots.create(s, principal, selection))
    return row


def _check_ident(ident: str) -> None:
    if not ident:
        raise InvalidArgument("id", "is required: a snapshot id or content hash")


async def get_snapshot(core: Core, ident: str) -> SnapshotRow:
    """A snapshot by its id or its content hash."""
    _check_ident(ident)
    return await core.db.run_sync(lambda s: snapshots.get(s, ident))


async def list_snapshots(core: Core, page_size: int, page_token: str) -> Page[SnapshotRow]:
    """Newest first."""
    limit, offset = page_bounds(page_size, page_token)
    rows = await core.db.run_sync(lambda s: snapshots.page(s, limit, offset))
    return Page(rows, next_token(offset, limit, len(rows)))


async def export_snapshot(
    core: Core, principal: str, ident: str, fmt: str, kind: str, split: str | None
) -> Export:
    """Renders a snapshot's records of one kind (``snapshots.PREFERENCE``, ``SFT`` or ``HARM``) and
    one split (``None``: both, each record naming its split) as JSON Lines or Parquet.
    The export is audited in the transaction that reads the records."""
    _check_ident(ident)
    if fmt not in (JSONL, PARQUET):
        raise InvalidArgument("format", "must be EXPORT_FORMAT_JSONL or EXPORT_FORMAT_PARQUET")
    if kind not in snapshots.KINDS:
        raise InvalidArgument(
            "kind", "must be EXPORT_KIND_PREFERENCE, EXPORT_KIND_SFT or EXPORT_KIND_HARM"
        )
    if split not in (None, snapshots.TRAIN, snapshots.EVAL):
        raise InvalidArgument("split", "must be SPLIT_TRAIN, SPLIT_EVAL or unspecified (both)")

    def load(s: Session) -> list[tuple[str, str]]:
        row = snapshots.get(s, ident)
        audit.append(s, principal, "export_snapshot", f"{row.id} {kind} {split or 'all'} {fmt}")
        return snapshots.records(s, row.id, kind, split)

    rows = await core.db.run_write(load)
    render = snapshots.render_jsonl if fmt == JSONL else snapshots.render_parquet
    data = await asyncio.to_thread(render, rows, split is None)
    return Export(len(rows), list(snapshots.chunks(data)), hashlib.sha256(data).hexdigest())
