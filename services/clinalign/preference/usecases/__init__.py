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

from dataclasses import dataclass
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
