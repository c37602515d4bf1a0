"""Use cases that write preference data (annotators, prompts and responses, the five kinds
of label, labelling guidelines) and GetPrompt, which reads a prompt back.

A Submit* use case checks its whole batch before it opens a transaction, then writes it
under the caller's idempotency key (``store.idempotent``): whole or not at all, once per
key. Checks that need the database (unknown ids, responses of different prompts) run
inside the transaction, so a batch that fails one writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from clinalign.common.errors import InvalidArgument
from clinalign.common.redaction import redact_fields, unchanged
from clinalign.preference import identity, store, validation
from clinalign.preference.domain import (
    Annotator,
    Batch,
    ComparisonIn,
    CorrectionIn,
    ErrorAnnotationIn,
    PromptIn,
    RankingIn,
    RatingIn,
    ResponseIn,
)
from clinalign.preference.identity import Caller, Labelled
from clinalign.preference.models import PromptRow, ResponseRow
from clinalign.preference.usecases import Core

Item = TypeVar("Item")


async def _submit(
    core: Core,
    principal: str,
    key: str,
    rpc: str,
    field: str,
    items: Sequence[Item],
    check: Callable[[str, Item], None],
    write: Callable[[Session, list[Item]], list[str]],
    text_fields: tuple[str, ...] = (),
) -> Batch:
    """Checks each item of ``items`` (request field ``field``), de-identifies its
    ``text_fields``, then runs ``write`` once per idempotency key, recorded and audited as
    ``rpc``."""
    validation.check_batch(field, items, core.limits)
    for i, item in enumerate(items):
        check(f"{field}[{i}]", item)
    digest = store.request_digest(rpc, items)  # of the request as sent
    clean = await redact_fields(core.redact, items, text_fields)
    return await core.db.run_write(
        lambda s: store.idempotent(s, key, rpc, principal, lambda: write(s, clean), digest)
    )


async def register_annotator(core: Core, caller: Caller, annotator: Annotator | None) -> Annotator:
    """Registers a pseudonymous annotator, or updates its role and specialty; a clinician
    registers only themselves (``identity.registration``)."""
    if annotator is None:
        raise InvalidArgument("annotator", "is required")
    validation.validate_annotator(annotator)
    return await core.db.run_write(lambda s: store.upsert_annotator(s, caller, annotator))


async def _submit_labels(
    core: Core,
    caller: Caller,
    key: str,
    rpc: str,
    field: str,
    items: Sequence[Labelled],
    check: Callable[[str, Any], None],
    write: Callable[[Session, list[Any]], list[str]],
    text_fields: tuple[str, ...] = (),
) -> Batch:
    """As ``_submit``, for labels: each label's annotator is resolved for the caller
    (``identity.bind``: people only as themselves) before it is checked and written."""
    validation.check_batch(field, items, core.limits)
    digest = store.request_digest(rpc, items)  # as sent: a replay sends the same
    clean = await redact_fields(core.redact, items, text_fields)

    def work(s: Session) -> Batch:
        bound = identity.bind(s, caller, field, clean)
        for i, item in enumerate(bound):
            check(f"{field}[{i}]", item)
        return store.idempotent(s, key, rpc, caller.shown, lambda: write(s, bound), digest)

    return await core.db.run_write(work)


async def submit_prompts(
    core: Core, principal: str, key: str, prompts: Sequence[PromptIn]
) -> Batch:
    return await _submit(
        core,
        principal,
        key,
        "submit_prompts",
        "prompts",
        prompts,
        lambda f, p: validation.check_prompt(f, p, core.limits),
        lambda s, clean: store.add_prompts(s, clean, unchanged, principal),
        ("text",),
    )


async def submit_responses(
    core: Core, principal: str, key: str, responses: Sequence[ResponseIn]
) -> Batch:
    # Malformed generation parameters are named before any other problem of the batch.
    for i, r in enumerate(responses):
        validation.check_generation_params(f"responses[{i}]", r)
    return await _submit(
        core,
        principal,
        key,
        "submit_responses",
        "responses",
        responses,
        lambda f, r: validation.check_response(f, r, core.limits),
        lambda s, clean: store.add_responses(s, clean, unchanged, principal),
        ("text",),
    )


async def submit_comparisons(
    core: Core, caller: Caller, key: str, comparisons: Sequence[ComparisonIn]
) -> Batch:
    return await _submit_labels(
        core,
        caller,
        key,
        "submit_comparisons",
        "comparisons",
        comparisons,
        validation.check_comparison,
        store.add_comparisons,
    )


async def submit_rankings(
    core: Core, caller: Caller, key: str, rankings: Sequence[RankingIn]
) -> Batch:
    return await _submit_labels(
        core,
        caller,
        key,
        "submit_rankings",
        "rankings",
        rankings,
        validation.check_ranking,
        store.add_rankings,
    )


async def submit_ratings(
    core: Core, caller: Caller, key: str, ratings: Sequence[RatingIn]
) -> Batch:
    return await _submit_labels(
        core,
        caller,
        key,
        "submit_ratings",
        "ratings",
        ratings,
        validation.check_rating,
        store.add_ratings,
    )


async def submit_corrections(
    core: Core, caller: Caller, key: str, corrections: Sequence[CorrectionIn]
) -> Batch:
    """Each correction also stores the rewrite as a human response and an implicit
    comparison preferring it over the original (``store.add_corrections``)."""
    return await _submit_labels(
        core,
        caller,
        key,
        "submit_corrections",
        "corrections",
        corrections,
        lambda f, c: validation.check_correction(f, c, core.limits),
        lambda s, items: store.add_corrections(s, items, unchanged, caller.shown),
        ("corrected_text", "comment"),
    )


async def submit_error_annotations(
    core: Core, caller: Caller, key: str, annotations: Sequence[ErrorAnnotationIn]
) -> Batch:
    return await _submit_labels(
        core,
        caller,
        key,
        "submit_error_annotations",
        "annotations",
        annotations,
        lambda f, a: validation.check_annotation(f, a, core.limits),
        lambda s, items: store.add_annotations(s, items, unchanged),
        ("comment",),
    )


async def get_prompt(core: Core, prompt_id: str) -> tuple[PromptRow, list[ResponseRow]]:
    """A prompt and its responses, oldest first."""
    validation.check_required("id", prompt_id)
    return await core.db.run_sync(lambda s: store.get_prompt(s, prompt_id))


async def publish_guidelines(core: Core, principal: str, version: str, text: str) -> str:
    """Publishes an immutable guideline version (again with the same text: a no-op)."""
    validation.check_guidelines(version, text)
    return await core.db.run_write(lambda s: store.publish_guidelines(s, principal, version, text))
