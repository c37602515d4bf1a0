"""The preference store's use cases, one function per RPC, transport-free: each takes
domain records and the caller's principal name, validates them (``InvalidArgument``
naming the field), and runs its writes and their audit entries in one transaction. The
servicer only converts between protobuf and these types; tests call them directly.

- ``ingest``: annotators, prompts, responses, labels, corrections, guidelines, GetPrompt;
- ``labelling``: the labelling queue and the agreement of its batches;
- ``exports``: dataset snapshots and their export;
- ``auditing``: reading and verifying the audit log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from clinalign.common.db import Database
from clinalign.preference.domain import Limits, Redactor

T = TypeVar("T")


@dataclass(frozen=True)
class Core:
    """What every use case runs against: the store, the de-identifier that free text
    passes before it is written, and the request limits."""

    db: Database
    redact: Redactor
    limits: Limits


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list and the token of the next one (empty on the last page)."""

    items: list[T]
    next_page_token: str


def kept(text: str) -> str:
    """The redactor the store is given for text already de-identified."""
    return text


async def deidentified(core: Core, items: Sequence[T], fields: tuple[str, ...]) -> list[T]:
    """``items`` with their free-text ``fields`` de-identified, in a worker thread before
    any transaction opens: the de-identifier is the slow part of a write, and it never
    runs while the store's write lock is held."""

    def clean() -> list[T]:
        return [
            replace(item, **{f: core.redact(getattr(item, f)) for f in fields if getattr(item, f)})  # type: ignore[type-var]
            for item in items
        ]

    return await asyncio.to_thread(clean)
