"""Immutable, content-hashed training snapshots and their export.

``create`` selects labels by a filter, turns them into canonical records, splits them
train/eval by a hash of the prompt (so a prompt and all its pairs land in one split, and
the split never moves as data grows), hashes the records, and copies them into
``snapshot_records``. The same filter over the same data gives the same records, hence
the same hash and the same snapshot: ``create`` then returns the existing one. Exports
read only the copied records, so they are byte for byte what was hashed, whatever has
been written since.

Record formats are the ones TRL's trainers read:
- preference (reward model, DPO): ``prompt``, ``chosen``, ``rejected`` plus lineage
  fields (ids, annotator, guideline version, source, tags, ``tie``, ``strength``,
  ``rejected_error_categories``);
- sft: ``prompt``, ``completion`` (clinician corrections and human-written responses).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from clinalign import __version__
from clinalign.common.errors import InvalidArgument, NotFound
from clinalign.preference import audit, store
from clinalign.preference.agreement import Label, agreement_report
from clinalign.preference.models import (
    ComparisonRow,
    CorrectionRow,
    ErrorAnnotationRow,
    PromptRow,
    RankingRow,
    ResponseRow,
    SnapshotRecordRow,
    SnapshotRow,
    TaskRow,
)

SCHEMA_VERSION = 1
PREFERENCE, SFT = "preference", "sft"
TRAIN, EVAL = "train", "eval"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Filter:
    start: datetime | None = None
    end: datetime | None = None
    sources: tuple[str, ...] = ()
    min_agreement: float = 0.0
    tie_handling: str = "drop"  # drop | keep
    deduplicate: bool = False
    eval_fraction: float = 0.1

    def validate(self) -> None:
        if self.start and self.end and self.start >= self.end:
            raise InvalidArgument("filter.start_time", "must be before filter.end_time")
        for i, s in enumerate(self.sources):
            if s not in store.SOURCES:
                raise InvalidArgument(f"filter.sources[{i}]", "is not a prompt source")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InvalidArgument("filter.min_agreement", "must be in [0, 1]")
        if self.tie_handling not in ("drop", "keep"):
            raise InvalidArgument("filter.tie_handling", "must be DROP or KEEP")
        if not 0.0 < self.eval_fraction <= 0.5:
            raise InvalidArgument("filter.eval_fraction", "must be in (0, 0.5]")

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = self.start.isoformat() if self.start else None
        d["end"] = self.end.isoformat() if self.end else None
        d["sources"] = sorted(self.sources)
        return d


@dataclass
class Built:
    records: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))

    def count(self, kind: str, split: str) -> int:
        return len(self.records.get((kind, split), []))


def split_of(prompt_sha: str, eval_fraction: float) -> str:
    bucket = int(hashlib.sha256(f"split:{prompt_sha}".encode()).hexdigest()[:8], 16) / 2**32
    return EVAL if bucket < eval_fraction else TRAIN


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _in_window(at: datetime, f: Filter) -> bool:
    at = _utc(at)
    return (f.start is None or at >= f.start) and (f.end is None or at < f.end)


def _batch_agreement(session: Session) -> dict[str, float | None]:
    """Krippendorff's alpha per task batch (raw agreement where alpha is undefined)."""
    from clinalign.preference.queue import batch_labels

    batches = session.execute(select(TaskRow.id, TaskRow.batch_id)).all()
    by_batch: dict[str, list[Label]] = defaultdict(list)
    task_batch = dict(batches)
    for task_id, annotator, value in batch_labels(session, ""):
        by_batch[task_batch[task_id]].append(Label(task_id, annotator, value))
    out: dict[str, float | None] = {}
    for batch, labels in by_batch.items():
        report = agreement_report(labels)
        out[batch] = (
            report.krippendorff_alpha
            if report.krippendorff_alpha is not None
            else report.raw_agreement
        )
    return out


def build(session: Session, f: Filter) -> Built:
    prompts = {
        p.id: p
        for p in session.scalars(select(PromptRow))
        if not f.sources or p.source in f.sources
    }
    responses = {r.id: r for r in session.scalars(select(ResponseRow))}
    errors: dict[str, set[str]] = defaultdict(set)
    for e in session.scalars(select(ErrorAnnotationRow)):
        errors[e.response_id].add(e.category)
    task_batch = dict(session.execute(select(TaskRow.id, TaskRow.batch_id)).all())
    agreement = _batch_agreement(session) if f.min_agreement > 0 else {}

    def admitted(task_id: str | None) -> bool:
        # Agreement is known only for labels collected through the queue; direct
        # submissions and corrections carry no batch and are always admitted.
        if f.min_agreement <= 0 or not task_id:
            return True
        score = agreement.get(task_batch.get(task_id, ""))
        return score is not None and score >= f.min_agreement

    pairs: list[
        tuple[str, str, str, bool, float, Any]
    ] = []  # prompt, chosen, rejected, tie, s, row
    for c in session.scalars(select(ComparisonRow).order_by(ComparisonRow.id)):
        if c.prompt_id not in prompts or not _in_window(c.created_at, f) or not admitted(c.task_id):
            continue
        if c.preference == "tie" and f.tie_handling == "drop":
            continue
        chosen, rejected = (
            (c.response_b_id, c.response_a_id)
            if c.preference == "b"
            else (c.response_a_id, c.response_b_id)
        )
        pairs.append((c.prompt_id, chosen, rejected, c.preference == "tie", c.strength, c))
    for k in session.scalars(select(RankingRow).order_by(RankingRow.id)):
        if k.prompt_id not in prompts or not _in_window(k.created_at, f) or not admitted(k.task_id):
            continue
        for i, better in enumerate(k.response_ids):
            for worse in k.response_ids[i + 1 :]:
                pairs.append((k.prompt_id, better, worse, False, 1.0, k))

    built = Built()
    seen: set[tuple[str, str, str]] = set()
    rows: list[tuple[tuple[str, ...], str, str]] = []
    for prompt_id, chosen, rejected, tie, strength, label in pairs:
        p, ch, rj = prompts[prompt_id], responses[chosen], responses[rejected]
        key = (
            p.text_sha256,
            hashlib.sha256(ch.text.encode()).hexdigest(),
            hashlib.sha256(rj.text.encode()).hexdigest(),
        )
        if f.deduplicate:
            if key in seen:
                continue
            seen.add(key)
        record = {
            "prompt": p.text,
            "chosen": ch.text,
            "rejected": rj.text,
            "tie": tie,
            "strength": strength,
            "prompt_id": p.id,
            "chosen_id": ch.id,
            "rejected_id": rj.id,
            "label_id": label.id,
            "annotator_id": label.annotator_id,
            "guideline_version": label.guideline_version,
            "source": p.source,
            "tags": sorted(p.tags),
            "rejected_error_categories": sorted(errors[rj.id]),
        }
        split = split_of(p.text_sha256, f.eval_fraction)
        rows.append(((split, p.text_sha256, ch.id, rj.id, label.id), split, canonical(record)))
    for _, split, line in sorted(rows):
        built.records[(PREFERENCE, split)].append(line)

    sft: list[tuple[tuple[str, ...], str, str]] = []
    for x in session.scalars(select(CorrectionRow).order_by(CorrectionRow.id)):
        fixed, original = responses[x.corrected_response_id], responses[x.response_id]
        fixed_prompt = prompts.get(original.prompt_id)
        if fixed_prompt is None or not _in_window(x.created_at, f):
            continue
        sft.append(_sft(fixed_prompt, fixed.text, x.id, x.annotator_id, "correction", f))
    for r in responses.values():
        demo_prompt = prompts.get(r.prompt_id)
        if demo_prompt is None or r.model_version or not _in_window(r.created_at, f):
            continue  # model-written, or a correction (model_version "human:...") above
        sft.append(_sft(demo_prompt, r.text, r.id, r.created_by, "demonstration", f))
    for _, split, line in sorted(sft):
        built.records[(SFT, split)].append(line)
    return built


def _sft(
    p: PromptRow, completion: str, ref: str, author: str, origin: str, f: Filter
) -> tuple[tuple[str, ...], str, str]:
    split = split_of(p.text_sha256, f.eval_fraction)
    record = {
        "prompt": p.text,
        "completion": completion,
        "prompt_id": p.id,
        "ref_id": ref,
        "author": author,
        "origin": origin,
        "source": p.source,
        "tags": sorted(p.tags),
    }
    return (split, p.text_sha256, ref), split, canonical(record)


def content_hash(built: Built) -> str:
    digest = hashlib.sha256(f"clinalign-snapshot-v{SCHEMA_VERSION}\n".encode())
    for kind in (PREFERENCE, SFT):
        for split in (TRAIN, EVAL):
            for line in built.records.get((kind, split), []):
                digest.update(f"{kind}\t{split}\t{line}\n".encode())
    return digest.hexdigest()


def create(session: Session, principal: str, f: Filter) -> tuple[SnapshotRow, bool]:
    """Returns (snapshot, created); an identical existing snapshot is returned as is."""
    f.validate()
    built = build(session, f)
    digest = content_hash(built)
    existing = session.scalar(select(SnapshotRow).where(SnapshotRow.content_hash == digest))
    if existing is not None:
        return existing, False
    sid = f"snap-{digest[:16]}"
    counts = {f"{k}_{s}": built.count(k, s) for k in (PREFERENCE, SFT) for s in (TRAIN, EVAL)}
    head = audit.append(session, principal, "create_snapshot", sid)
    manifest = {
        "id": sid,
        "content_hash": digest,
        "schema_version": SCHEMA_VERSION,
        "filter": f.as_json(),
        "counts": counts,
        "code_version": __version__,
        "split": {
            "method": "sha256('split:' + prompt_sha256) < eval_fraction",
            "eval_fraction": f.eval_fraction,
        },
        "formats": {PREFERENCE: ["prompt", "chosen", "rejected"], SFT: ["prompt", "completion"]},
        # Anchors the audit chain: a later truncation of the log below this entry shows.
        "audit_entry": {"sequence": head.seq, "hash": head.entry_hash},
    }
    row = SnapshotRow(
        id=sid,
        content_hash=digest,
        filter=f.as_json(),
        manifest=manifest,
        train_pairs=counts["preference_train"],
        eval_pairs=counts["preference_eval"],
        sft_records=counts["sft_train"] + counts["sft_eval"],
        created_by=principal,
        created_at=store.now(),
    )
    session.add(row)
    session.flush()
    values = [
        {"snapshot_id": sid, "kind": kind, "split": split, "seq": seq, "record": line}
        for (kind, split), lines in sorted(built.records.items())
        for seq, line in enumerate(lines)
    ]
    for start in range(0, len(values), 5000):
        session.execute(insert(SnapshotRecordRow), values[start : start + 5000])
    return row, True


def get(session: Session, ident: str) -> SnapshotRow:
    row = session.get(SnapshotRow, ident) or session.scalar(
        select(SnapshotRow).where(SnapshotRow.content_hash == ident)
    )
    if row is None:
        raise NotFound("snapshot", ident, field="id")
    return row


def page(session: Session, limit: int, offset: int) -> list[SnapshotRow]:
    return list(
        session.scalars(
            select(SnapshotRow)
            .order_by(SnapshotRow.created_at.desc(), SnapshotRow.id)
            .limit(limit)
            .offset(offset)
        )
    )


def records(session: Session, sid: str, kind: str, split: str | None) -> list[tuple[str, str]]:
    """(split, canonical record) in canonical order."""
    query = select(SnapshotRecordRow.split, SnapshotRecordRow.record).where(
        SnapshotRecordRow.snapshot_id == sid, SnapshotRecordRow.kind == kind
    )
    if split:
        query = query.where(SnapshotRecordRow.split == split)
    rows = session.execute(
        query.order_by(SnapshotRecordRow.split.desc(), SnapshotRecordRow.seq)
    ).all()
    return [(s, r) for s, r in rows]


def render_jsonl(rows: list[tuple[str, str]], with_split: bool) -> bytes:
    if not with_split:
        return "".join(r + "\n" for _, r in rows).encode()
    # Canonical records are JSON objects: the split column is spliced in as the first key.
    return "".join('{"split":"' + s + '",' + r[1:] + "\n" for s, r in rows).encode()


def render_parquet(rows: list[tuple[str, str]], with_split: bool) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_rows = []
    for s, r in rows:
        rec = json.loads(r)
        if with_split:
            rec["split"] = s
        table_rows.append(rec)
    table = pa.Table.from_pylist(table_rows)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]
    if not data:
        yield b""
