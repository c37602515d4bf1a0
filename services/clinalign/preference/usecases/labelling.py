"""Use cases of the labelling queue (CreateTasks, NextTask, SubmitTask, SkipTask) and of
the agreement between the annotators of a batch (GetAgreement). The queue's rules (k
distinct annotators a task, never one twice, unfinished work first) live in ``queue``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from clinalign.common.errors import InvalidArgument
from clinalign.preference import agreement, queue, store, validation
from clinalign.preference.domain import (
    Batch,
    ComparisonIn,
    ErrorAnnotationIn,
    LabelMeta,
    RankingIn,
    RatingIn,
)
from clinalign.preference.usecases import Core

DEFAULT_ADJUDICATION_THRESHOLD = 0.67


@dataclass(frozen=True)
class TaskSubmission:
    """An annotator's answer to a task: one comparison or ranking (``None`` when the
    request carried neither), with optional ratings and error annotations."""

    task_id: str
    annotator_id: str
    label: ComparisonIn | RankingIn | None
    ratings: Sequence[RatingIn] = ()
    annotations: Sequence[ErrorAnnotationIn] = ()


@dataclass(frozen=True)
class Agreement:
    report: agreement.AgreementReport
    # Tasks labelled at least twice whose consensus is below the threshold.
    adjudication: list[agreement.ItemConsensus]


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
        )
    )


async def next_task(core: Core, annotator_id: str, batch_id: str) -> queue.TaskView | None:
    """The annotator's unfinished task, else a newly assigned one; ``None`` when the queue
    (of ``batch_id``, or of every batch) holds nothing for them."""
    validation.check_required("annotator_id", annotator_id)
    return await core.db.run_write(lambda s: queue.next_task(s, annotator_id, batch_id))


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


async def submit_task(core: Core, principal: str, key: str, sub: TaskSubmission) -> Batch:
    """Records the label and completes the annotator's assignment; ``ids`` holds the
    label's id."""
    validation.check_required("task_id", sub.task_id)
    validation.check_required("annotator_id", sub.annotator_id)
    comparison, ranking = _task_label(sub)
    for i, r in enumerate(sub.ratings):
        validation.check_rating(f"ratings[{i}]", r)
    for i, a in enumerate(sub.annotations):
        validation.check_annotation(f"annotations[{i}]", a, core.limits)
    return await core.db.run_write(
        lambda s: store.idempotent(
            s,
            key,
            "submit_task",
            principal,
            lambda: [
                queue.submit(
                    s,
                    sub.task_id,
                    sub.annotator_id,
                    comparison,
                    ranking,
                    sub.ratings,
                    sub.annotations,
                    core.redact,
                )
            ],
        )
    )


async def skip_task(
    core: Core, principal: str, task_id: str, annotator_id: str, reason: str
) -> None:
    """Frees the annotator's slot for someone else; the task never returns to them."""
    validation.check_required("task_id", task_id)
    validation.check_required("annotator_id", annotator_id)
    validation.check_text("reason", reason, core.limits, required=False)
    await core.db.run_write(
        lambda s: queue.skip(s, principal, task_id, annotator_id, reason, core.redact)
    )


async def get_agreement(core: Core, batch_id: str, adjudication_threshold: float) -> Agreement:
    """Agreement statistics of a batch's labels (every batch's when ``batch_id`` is
    empty), and the tasks whose consensus falls below ``adjudication_threshold``."""
    if not 0.0 < adjudication_threshold <= 1.0:
        raise InvalidArgument("adjudication_threshold", "must be in (0, 1]")
    rows = await core.db.run_sync(lambda s: queue.batch_labels(s, batch_id))
    labels = [agreement.Label(t, a, v) for t, a, v in rows]
    low = agreement.low_consensus(labels, adjudication_threshold)
    return Agreement(agreement.agreement_report(labels), [c for c in low if c.n_labels >= 2])
