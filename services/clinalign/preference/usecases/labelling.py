"""Use cases of the labelling queue (CreateTasks, NextTask, SubmitTask, SkipTask,
GetProgress) and of the agreement between the annotators of a batch (GetAgreement). The
queue's rules (k distinct annotators a task, never one twice, unfinished work first) live
in ``queue``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy.orm import Session

from clinalign.common.errors import InvalidArgument
from clinalign.common.redaction import redact_fields, unchanged
from clinalign.preference import agreement, identity, queue, store, validation
from clinalign.preference.domain import (
    ADDED_LATER,
    Batch,
    ComparisonIn,
    ErrorAnnotationIn,
    LabelMeta,
    RankingIn,
    RatingIn,
    now,
)
from clinalign.preference.identity import Caller, L
from clinalign.preference.usecases import Core

DEFAULT_ADJUDICATION_THRESHOLD = 0.67


@dataclass(frozen=True)
class TaskSubmission:
    """An annotator's answer to a task: one comparison or ranking (``None`` when the
    request carried neither), with optional ratings and error annotations, and the order
    the task's responses were shown in (empty when not recorded)."""

    task_id: str
    annotator_id: str
    label: ComparisonIn | RankingIn | None
    ratings: Sequence[RatingIn] = ()
    annotations: Sequence[ErrorAnnotationIn] = ()
    presented_response_ids: tuple[str, ...] = field(default=(), metadata=ADDED_LATER)


@dataclass(frozen=True)
class Agreement:
    report: agreement.AgreementReport
    # Tasks labelled at least twice whose consensus is below the threshold.
    adjudication: list[agreement.ItemConsensus]
    # Each annotator's labels and agreement with the others, by annotator id.
    annotators: list[agreement.AnnotatorAgreement]
    # How often two-response labels chose the response shown first.
    position: agreement.PositionBias


async def create_tasks(
    core: Core,
    principal: str,
    key: str,
    batch_id: str,
    specs: Sequence[queue.TaskSpec],
    overlap: int,
    guideline_version: str,
) -> Batch:
    """Queues one task a spec, each to be shown to ``overlap`` distinct annotators."""
    queue.check_create(batch_id, specs, overlap, guideline_version, core.limits)
    return await core.db.run_write(
        lambda s: store.idempotent(
            s,
            key,
            "create_tasks",
            principal,
            lambda: queue.create_tasks(s, batch_id, specs, overlap, guideline_version),
            store.request_digest(batch_id, specs, overlap, guideline_version),
        )
    )


async def next_task(
    core: Core, caller: Caller, annotator_id: str, batch_id: str
) -> queue.TaskView | None:
    """The annotator's unfinished task, else a newly assigned one; ``None`` when the queue
    (of ``batch_id``, or of every batch) holds nothing for them."""

    def work(s: Session) -> queue.TaskView | None:
        who = identity.acting_as(s, caller, "annotator_id", annotator_id)
        return queue.next_task(s, who, batch_id)

    return await core.db.run_write(work)


def _task_label(sub: TaskSubmission) -> tuple[ComparisonIn | None, RankingIn | None]:
    """The label, checked, as the task's: by the annotator it was assigned to, under its id
    (the label's own guideline version kept)."""
    if sub.label is None:
        return None, None
    meta = LabelMeta(sub.annotator_id, sub.label.meta.guideline_version, sub.task_id)
    if isinstance(sub.label, ComparisonIn):
        comparison = replace(sub.label, meta=meta)
        validation.check_comparison("comparison", comparison)
        return comparison, None
    ranking = replace(sub.label, meta=meta)
    validation.check_ranking("ranking", ranking)
    return None, ranking


def _as_annotator(field: str, items: Sequence[L], annotator_id: str) -> list[L]:
    """A task's ratings and annotations are its annotator's: an empty annotator id is
    filled in, another one refused."""
    out = []
    for i, item in enumerate(items):
        given = item.meta.annotator_id
        if given and given != annotator_id:
            raise InvalidArgument(
                f"{field}[{i}].context.annotator_id", "must be the task's annotator or empty"
            )
        out.append(replace(item, meta=replace(item.meta, annotator_id=annotator_id)))  # type: ignore[type-var]
    return out


async def submit_task(core: Core, caller: Caller, key: str, sub: TaskSubmission) -> Batch:
    """Records the label and completes the annotator's assignment; ``ids`` holds the
    label's id."""
    validation.check_required("task_id", sub.task_id)
    digest = store.request_digest("submit_task", sub)  # of the request as sent
    # De-identified before the transaction (common.redaction): never under the lock.
    sub = replace(sub, annotations=await redact_fields(core.redact, sub.annotations, ("comment",)))

    def work(s: Session) -> Batch:
        who = identity.acting_as(s, caller, "annotator_id", sub.annotator_id)
        bound = replace(
            sub,
            annotator_id=who,
            ratings=_as_annotator("ratings", sub.ratings, who),
            annotations=_as_annotator("annotations", sub.annotations, who),
        )
        comparison, ranking = _task_label(bound)
        for i, r in enumerate(bound.ratings):
            validation.check_rating(f"ratings[{i}]", r)
        for i, a in enumerate(bound.annotations):
            validation.check_annotation(f"annotations[{i}]", a, core.limits)
        return store.idempotent(
            s,
            key,
            "submit_task",
            caller.shown,
            lambda: [
                queue.submit(
                    s,
                    bound.task_id,
                    who,
                    comparison,
                    ranking,
                    bound.ratings,
                    bound.annotations,
                    unchanged,
                    bound.presented_response_ids,
                )
            ],
            digest,
        )

    return await core.db.run_write(work)


async def skip_task(
    core: Core, caller: Caller, task_id: str, annotator_id: str, reason: str
) -> None:
    """Frees the annotator's slot for someone else; the task never returns to them."""
    validation.check_required("task_id", task_id)
    validation.check_text("reason", reason, core.limits, required=False)

    clean = await asyncio.to_thread(core.redact, reason) if reason else ""

    def work(s: Session) -> None:
        who = identity.acting_as(s, caller, "annotator_id", annotator_id)
        queue.skip(s, caller.shown, task_id, who, clean, unchanged)

    await core.db.run_write(work)


async def get_progress(
    core: Core, caller: Caller, annotator_id: str, batch_id: str
) -> queue.Progress:
    """The annotator's labels today (UTC) and in all, what the queue still holds for them
    and what they skipped; a clinician reads only their own, a clinical lead anyone's
    (``identity.reading_as``)."""
    midnight = now().replace(hour=0, minute=0, second=0, microsecond=0)

    def work(s: Session) -> queue.Progress:
        who = identity.reading_as(s, caller, "annotator_id", annotator_id)
        return queue.progress(s, who, batch_id, midnight)

    return await core.db.run_sync(work)


async def get_agreement(core: Core, batch_id: str, adjudication_threshold: float) -> Agreement:
    """Agreement statistics of a batch's labels (every batch's when ``batch_id`` is
    empty), each annotator's share in them, position bias, and the tasks whose consensus
    falls below ``adjudication_threshold``."""
    if not 0.0 < adjudication_threshold <= 1.0:
        raise InvalidArgument("adjudication_threshold", "must be in (0, 1]")
    rows, first_shown = await core.db.run_sync(
        lambda s: (queue.batch_labels(s, batch_id), queue.first_shown_choices(s, batch_id))
    )
    labels = [agreement.Label(t, a, v) for t, a, v in rows]
    low = agreement.low_consensus(labels, adjudication_threshold)
    return Agreement(
        agreement.agreement_report(labels),
        [c for c in low if c.n_labels >= 2],
        agreement.annotator_agreement(labels),
        agreement.position_bias(first_shown),
    )
