"""The labelling queue: tasks shown to k distinct annotators, never twice to one.

A task's open slots are its overlap minus its assignments that are in progress or done;
a skip frees the slot for someone else and the task is never offered to the skipper
again. An annotator with an unfinished assignment gets that task back first, so a
reconnecting clinician resumes where they were. The (task, annotator) uniqueness
constraint makes double assignment impossible even under concurrent NextTask calls.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from clinalign.common.errors import InvalidArgument, NotFound
from clinalign.preference import audit, domain, store, validation
from clinalign.preference.models import (
    AnnotatorRow,
    AssignmentRow,
    ComparisonRow,
    GuidelineRow,
    PromptRow,
    RankingRow,
    ResponseRow,
    TaskRow,
)

ACTIVE = ("assigned", "done")
MAX_OVERLAP = 10


@dataclass(frozen=True)
class TaskSpec:
    prompt_id: str
    response_ids: tuple[str, ...]


@dataclass(frozen=True)
class TaskView:
    task: TaskRow
    prompt: PromptRow
    responses: list[ResponseRow]
    guideline_text: str


@dataclass(frozen=True)
class Progress:
    """One annotator's queue work (of one batch, or of all): tasks labelled today (UTC)
    and in all, tasks the queue still holds for them, tasks they skipped."""

    annotator_id: str
    labelled_today: int
    labelled_total: int
    remaining: int
    skipped: int


def check_create(
    batch_id: str, specs: Sequence[TaskSpec], overlap: int, guideline: str, limits: domain.Limits
) -> None:
    if not batch_id:
        raise InvalidArgument("batch_id", "is required")
    validation.check_batch("tasks", specs, limits)
    if not 1 <= overlap <= MAX_OVERLAP:
        raise InvalidArgument("overlap", f"must be between 1 and {MAX_OVERLAP}, got {overlap}")
    if not guideline:
        raise InvalidArgument("guideline_version", "is required")
    for i, spec in enumerate(specs):
        if not spec.prompt_id:
            raise InvalidArgument(f"tasks[{i}].prompt_id", "is required")
        if len(spec.response_ids) < 2:
            raise InvalidArgument(f"tasks[{i}].response_ids", "needs at least two responses")
        if len(set(spec.response_ids)) != len(spec.response_ids):
            raise InvalidArgument(f"tasks[{i}].response_ids", "must not repeat a response")


def create_tasks(
    session: Session, batch_id: str, specs: Sequence[TaskSpec], overlap: int, guideline: str
) -> list[str]:
    if session.get(GuidelineRow, guideline) is None:
        raise NotFound("guideline version", guideline, field="guideline_version")
    prompt_of = store.response_prompts(
        session,
        [
            (f"tasks[{i}].response_ids[{j}]", rid)
            for i, spec in enumerate(specs)
            for j, rid in enumerate(spec.response_ids)
        ],
    )
    t = domain.now()
    ids = []
    for i, spec in enumerate(specs):
        for j, rid in enumerate(spec.response_ids):
            if prompt_of[rid] != spec.prompt_id:
                raise InvalidArgument(
                    f"tasks[{i}].response_ids[{j}]", f"does not answer prompt {spec.prompt_id}"
                )
        # Time-ordered ids: the queue hands tasks out in the order they were created.
        tid = f"task_{time.time_ns():016x}{i:04x}{uuid.uuid4().hex[:8]}"
        session.add(
            TaskRow(
                id=tid,
                batch_id=batch_id,
                prompt_id=spec.prompt_id,
                response_ids=list(spec.response_ids),
                overlap=overlap,
                guideline_version=guideline,
                created_at=t,
            )
        )
        ids.append(tid)
    return ids


def _shuffled(task: TaskRow, annotator_id: str, responses: list[ResponseRow]) -> list[ResponseRow]:
    """A per-annotator order, stable across calls, so position bias averages out."""
    return sorted(
        responses,
        key=lambda r: hashlib.sha256(f"{task.id}:{annotator_id}:{r.id}".encode()).hexdigest(),
    )


def _view(session: Session, task: TaskRow, annotator_id: str) -> TaskView:
    prompt = session.get(PromptRow, task.prompt_id)
    assert prompt is not None
    by_id = {
        r.id: r
        for r in session.scalars(select(ResponseRow).where(ResponseRow.id.in_(task.response_ids)))
    }
    guideline = session.get(GuidelineRow, task.guideline_version)
    return TaskView(
        task,
        prompt,
        _shuffled(task, annotator_id, [by_id[r] for r in task.response_ids]),
        guideline.text if guideline else "",
    )


def _assignable(annotator_id: str, batch_id: str) -> Select[TaskRow]:
    """Tasks NextTask may newly assign the annotator: never seen by them, a slot open."""
    seen = select(AssignmentRow.task_id).where(AssignmentRow.annotator_id == annotator_id)
    taken = (
        select(func.count())
        .where(AssignmentRow.task_id == TaskRow.id, AssignmentRow.status.in_(ACTIVE))
        .correlate(TaskRow)
        .scalar_subquery()
    )
    query = select(TaskRow).where(TaskRow.id.not_in(seen), taken < TaskRow.overlap)
    if batch_id:
        query = query.where(TaskRow.batch_id == batch_id)
    return query


def _known(session: Session, annotator_id: str) -> None:
    if session.get(AnnotatorRow, annotator_id) is None:
        raise NotFound("annotator", annotator_id, field="annotator_id")


def next_task(session: Session, annotator_id: str, batch_id: str) -> TaskView | None:
    _known(session, annotator_id)
    pending = select(AssignmentRow).where(
        AssignmentRow.annotator_id == annotator_id, AssignmentRow.status == "assigned"
    )
    if batch_id:
        pending = pending.join(TaskRow, TaskRow.id == AssignmentRow.task_id).where(
            TaskRow.batch_id == batch_id
        )
    current = session.scalars(pending.order_by(AssignmentRow.id).limit(1)).first()
    if current is not None:
        task = session.get(TaskRow, current.task_id)
        assert task is not None
        return _view(session, task, annotator_id)
    query = _assignable(annotator_id, batch_id)
    task = session.scalars(query.order_by(TaskRow.created_at, TaskRow.id).limit(1)).first()
    if task is None:
        return None
    session.add(
        AssignmentRow(
            task_id=task.id, annotator_id=annotator_id, status="assigned", assigned_at=domain.now()
        )
    )
    session.flush()
    return _view(session, task, annotator_id)


def _assignment(session: Session, task_id: str, annotator_id: str) -> tuple[TaskRow, AssignmentRow]:
    task = session.get(TaskRow, task_id)
    if task is None:
        raise NotFound("task", task_id, field="task_id")
    row = session.scalar(
        select(AssignmentRow).where(
            AssignmentRow.task_id == task_id, AssignmentRow.annotator_id == annotator_id
        )
    )
    if row is None:
        raise InvalidArgument("annotator_id", f"was not assigned task {task_id}")
    if row.status == "done":
        raise InvalidArgument("annotator_id", f"has already labelled task {task_id}")
    if row.status == "skipped":
        raise InvalidArgument("annotator_id", f"skipped task {task_id}")
    return task, row


def submit(
    session: Session,
    task_id: str,
    annotator_id: str,
    comparison: domain.ComparisonIn | None,
    ranking: domain.RankingIn | None,
    ratings: Sequence[domain.RatingIn],
    annotations: Sequence[domain.ErrorAnnotationIn],
    redact: domain.Redactor,
    presented: Sequence[str] = (),
) -> str:
    task, assignment = _assignment(session, task_id, annotator_id)
    members = set(task.response_ids)
    if presented and sorted(presented) != sorted(task.response_ids):
        raise InvalidArgument(
            "presented_response_ids",
            f"must list task {task_id}'s {len(members)} response ids, each once, in the order "
            "shown; or be empty",
        )
    if comparison is not None:
        if len(task.response_ids) != 2:
            raise InvalidArgument(
                "ranking",
                f"task {task_id} has {len(members)} responses: rank them instead of comparing",
            )
        if {comparison.response_a_id, comparison.response_b_id} != members:
            raise InvalidArgument("comparison", "must compare exactly the task's two responses")
        label_id = store.add_comparisons(session, [comparison])[0]
    elif ranking is not None:
        if set(ranking.response_ids) != members:
            raise InvalidArgument("ranking.response_ids", "must rank exactly the task's responses")
        label_id = store.add_rankings(session, [ranking])[0]
    else:
        raise InvalidArgument("label", "is required: a comparison or a ranking")
    for i, r in enumerate(ratings):
        if r.response_id not in members:
            raise InvalidArgument(f"ratings[{i}].response_id", "is not one of the task's responses")
    for i, a in enumerate(annotations):
        if a.response_id not in members:
            raise InvalidArgument(
                f"annotations[{i}].response_id", "is not one of the task's responses"
            )
    if ratings:
        store.add_ratings(session, ratings)
    if annotations:
        store.add_annotations(session, annotations, redact)
    assignment.status, assignment.label_id, assignment.completed_at = "done", label_id, domain.now()
    if presented:
        assignment.presented_response_ids = list(presented)
    return label_id


def skip(
    session: Session,
    principal: str,
    task_id: str,
    annotator_id: str,
    reason: str,
    redact: domain.Redactor,
) -> None:
    _, assignment = _assignment(session, task_id, annotator_id)
    assignment.status, assignment.completed_at = "skipped", domain.now()
    assignment.reason = redact(reason) if reason else ""
    audit.append(session, principal, "skip_task", f"{task_id} by {annotator_id}")


def progress(session: Session, annotator_id: str, batch_id: str, since: datetime) -> Progress:
    """The annotator's queue work in ``batch_id`` (every batch when empty); labels
    completed at or after ``since`` count as today's."""
    _known(session, annotator_id)
    mine = select(
        AssignmentRow.status,
        func.count(),
        func.sum(case((AssignmentRow.completed_at >= since, 1), else_=0)),
    ).where(AssignmentRow.annotator_id == annotator_id)
    if batch_id:
        mine = mine.join(TaskRow, TaskRow.id == AssignmentRow.task_id).where(
            TaskRow.batch_id == batch_id
        )
    counts = {
        status: (int(n), int(recent or 0))
        for status, n, recent in session.execute(mine.group_by(AssignmentRow.status))
    }
    open_ = select(func.count()).select_from(_assignable(annotator_id, batch_id).subquery())
    return Progress(
        annotator_id,
        labelled_today=counts.get("done", (0, 0))[1],
        labelled_total=counts.get("done", (0, 0))[0],
        remaining=counts.get("assigned", (0, 0))[0] + int(session.scalar(open_) or 0),
        skipped=counts.get("skipped", (0, 0))[0],
    )


def _batch_tasks(session: Session, batch_id: str) -> dict[str, TaskRow]:
    query = select(TaskRow)
    if batch_id:
        query = query.where(TaskRow.batch_id == batch_id)
    return {t.id: t for t in session.scalars(query)}


def batch_labels(session: Session, batch_id: str) -> list[tuple[str, str, str]]:
    """(task id, annotator id, label value) for agreement. Values use the task's own,
    canonical response order, shared by every item: a comparison is "A" (the task's first
    response preferred), "B" or "tie"; a ranking is the position of its top response. So
    per-annotator display shuffling cannot make agreeing labels look different, and the
    categories mean the same thing across items, as kappa and alpha assume."""
    tasks = _batch_tasks(session, batch_id)
    out: list[tuple[str, str, str]] = []
    if not tasks:
        return out
    for c in session.scalars(select(ComparisonRow).where(ComparisonRow.task_id.in_(tasks))):
        order = tasks[c.task_id or ""].response_ids
        preferred = {"a": c.response_a_id, "b": c.response_b_id}.get(c.preference)
        value = "tie" if preferred is None else "AB"[order.index(preferred)]
        out.append((c.task_id or "", c.annotator_id, value))
    for r in session.scalars(select(RankingRow).where(RankingRow.task_id.in_(tasks))):
        order = tasks[r.task_id or ""].response_ids
        out.append((r.task_id or "", r.annotator_id, str(order.index(r.response_ids[0]))))
    return out


def first_shown_choices(session: Session, batch_id: str) -> list[bool]:
    """For position bias: of each non-tie comparison given to a task of ``batch_id``
    (every batch when empty) whose presented order was recorded, whether it chose the
    response shown first."""
    query = (
        select(ComparisonRow, AssignmentRow.presented_response_ids)
        .join(AssignmentRow, AssignmentRow.label_id == ComparisonRow.id)
        .where(ComparisonRow.preference != "tie")
    )
    if batch_id:
        query = query.join(TaskRow, TaskRow.id == AssignmentRow.task_id).where(
            TaskRow.batch_id == batch_id
        )
    out = []
    for c, presented in session.execute(query):
        if presented:
            chosen = c.response_a_id if c.preference == "a" else c.response_b_id
            out.append(chosen == presented[0])
    return out
