"""De-identifying a write's free text before its transaction opens, for the stores that
take clinical text (preference, monitor): the de-identifier is the slow part of a write,
so it runs in a worker thread and never while a store's write lock is held. The store is
then handed :func:`unchanged` as its redactor for text already de-identified."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

T = TypeVar("T")


def unchanged(text: str) -> str:
    """The redactor a store is given for text already de-identified."""
    return text


async def redact_fields(
    redact: Callable[[str], str], items: Sequence[T], fields: tuple[str, ...]
) -> list[T]:
    """``items`` (dataclasses) with their non-empty text ``fields`` de-identified, in a
    worker thread."""

    def clean() -> list[T]:
        return [
            replace(item, **{f: redact(getattr(item, f)) for f in fields if getattr(item, f)})  # type: ignore[type-var]
            for item in items
        ]

    return await asyncio.to_thread(clean)
