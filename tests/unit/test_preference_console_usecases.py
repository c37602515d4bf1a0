"""What the clinician console needs of the preference store's use cases, called directly:
the order a task's responses were shown in, stored with the label and refused unless it is
the task's responses; error spans, checked (both or neither, within the stored text) before
anything is written; an annotator's progress, as themselves or read by a clinical lead;
and request digests that a request without the new fields still matches after an upgrade."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from clinalign.common.errors import InvalidArgument, NotFound, PermissionDenied
from clinalign.preference import models, queue, store
from clinalign.preference.domain import (
    Annotator,
    ComparisonIn,
    ErrorAnnotationIn,
    LabelMeta,
    now,
)
from clinalign.preference.identity import Caller
from clinalign.preference.usecases import Core, ingest, labelling
from tests.unit.test_preference_usecases import (
    GUIDE,
    SVC,
    WHO,
    _audit,
    _count,
    _meta,
    _prompt,
    _setup,
    core,
)

__all__ = ["core"]  # the fixture, shared with the use-case tests

ANSWER = "Answer 0 to Chest pain?"  # the first response _prompt stores: 23 characters
ALICE = Caller("oidc-alice", person=True, names_annotators=False)
LEAD = Caller("oidc-lead", person=True, names_annotators=False, reads_annotators=True)


async def _one_task(core: Core, batch: str = "b1", overlap: int = 1) -> tuple[str, str, str]:
    """A two-response task, assigned to ann-0: (task id, its first response, its second)."""
    pid, (a, b) = await _prompt(core, f"Chest pain in {batch}?")
    (task_id,) = (
        await labelling.create_tasks(
            core, WHO, f"tasks-{batch}", batch, [queue.TaskSpec(pid, (a, b))], overlap, GUIDE
        )
    ).ids
    assert await labelling.next_task(core, SVC, "ann-0", batch) is not None
    return task_id, a, b


async def _presented(core: Core) -> list[list[str] | None]:
    return await core.db.run_sync(
        lambda s: list(s.scalars(select(models.AssignmentRow.presented_response_ids)))
    )


async def test_the_presented_order_is_stored_with_the_label_and_must_be_the_tasks(
    core: Core,
) -> None:
    await _setup(core)
    task_id, a, b = await _one_task(core)
    label = ComparisonIn(_meta(), a, b, "a")
    for shown in ((a,), (a, a), (a, b, "r_other"), (a, "r_other")):
        with pytest.raises(
            InvalidArgument, match=rf"^presented_response_ids: must list task {task_id}'s 2"
        ):
            await labelling.submit_task(
                core,
                SVC,
                "key-00100",
                labelling.TaskSubmission(task_id, "ann-0", label, presented_response_ids=shown),
            )
    assert await _count(core, models.ComparisonRow) == 0
    sub = labelling.TaskSubmission(task_id, "ann-0", label, presented_response_ids=(b, a))
    first = await labelling.submit_task(core, SVC, "key-00101", sub)
    assert await _presented(core) == [[b, a]]
    # A retry replays; the same key with another order is another request.
    again = await labelling.submit_task(core, SVC, "key-00101", sub)
    assert (again.ids, again.replayed) == (first.ids, True)
    with pytest.raises(InvalidArgument, match=r"^idempotency_key: was already used for a diff"):
        await labelling.submit_task(
            core,
            SVC,
            "key-00101",
            labelling.TaskSubmission(task_id, "ann-0", label, presented_response_ids=(a, b)),
        )
    # It chose a, shown second.
    got = await labelling.get_agreement(core, "b1", labelling.DEFAULT_ADJUDICATION_THRESHOLD)
    assert (got.position.labels, got.position.first_shown_share) == (1, 0.0)


async def test_first_shown_share_counts_recorded_non_tie_comparisons_of_the_batch(
    core: Core,
) -> None:
    await _setup(core, annotators=1)
    # Four tasks: chose the first shown, chose the second, a tie, order not recorded.
    for i, (preference, record) in enumerate(
        (("a", True), ("b", True), ("tie", True), ("a", False))
    ):
        task_id, a, b = await _one_task(core, batch=f"pos{i}")
        shown = (a, b) if record else ()
        await labelling.submit_task(
            core,
            SVC,
            f"key-0020{i}",
            labelling.TaskSubmission(
                task_id,
                "ann-0",
                ComparisonIn(_meta(), a, b, preference),
                presented_response_ids=shown,
            ),
        )
    every = await labelling.get_agreement(core, "", labelling.DEFAULT_ADJUDICATION_THRESHOLD)
    assert (every.position.labels, every.position.first_shown_share) == (2, 0.5)
    one = await labelling.get_agreement(core, "pos0", labelling.DEFAULT_ADJUDICATION_THRESHOLD)
    assert (one.position.labels, one.position.first_shown_share) == (1, 1.0)
    none = await labelling.get_agreement(core, "pos3", labelling.DEFAULT_ADJUDICATION_THRESHOLD)
    assert (none.position.labels, none.position.first_shown_share) == (0, None)
    assert [x.annotator_id for x in every.annotators] == ["ann-0"]
    assert (every.annotators[0].labels, every.annotators[0].agreement) == (4, None)


def _span(response_id: str, start: int | None, end: int | None) -> ErrorAnnotationIn:
    return ErrorAnnotationIn(_meta(), response_id, "omission", "", "", start, end)


async def test_an_error_span_is_both_offsets_within_the_stored_text_or_nothing_is_written(
    core: Core,
) -> None:
    await _setup(core)
    _, (a, b) = await _prompt(core)
    audit_before = await _audit(core)
    whole, good = _span(a, None, None), _span(a, 0, len(ANSWER))
    for bad, message in (
        (_span(a, 3, None), r"^annotations\[1\]\.span_end: is required with span_start"),
        (_span(a, None, 3), r"^annotations\[1\]\.span_start: is required with span_end"),
        (_span(a, -1, 3), r"^annotations\[1\]\.span_start: must be at least 0, got -1"),
        (_span(a, 5, 5), r"^annotations\[1\]\.span_end: must be greater than span_start \(5\)"),
        (_span(b, 0, 24), rf"^annotations\[1\]\.span_end: is 24, past the end of response {b}"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            await ingest.submit_error_annotations(core, SVC, "key-00300", [good, bad])
    assert await _count(core, models.ErrorAnnotationRow) == 0
    assert await _audit(core) == audit_before
    await ingest.submit_error_annotations(core, SVC, "key-00301", [whole, good, _span(b, 4, 5)])
    spans = await core.db.run_sync(
        lambda s: {
            (e.response_id, e.span_start, e.span_end)
            for e in s.scalars(select(models.ErrorAnnotationRow))
        }
    )
    assert spans == {(a, None, None), (a, 0, 23), (b, 4, 5)}


async def test_a_tasks_error_span_is_checked_before_the_label_is_written(core: Core) -> None:
    await _setup(core)
    task_id, a, b = await _one_task(core)
    label = ComparisonIn(_meta(), a, b, "a")
    with pytest.raises(InvalidArgument, match=r"^annotations\[0\]\.span_end: is 99, past the end"):
        await labelling.submit_task(
            core,
            SVC,
            "key-00400",
            labelling.TaskSubmission(task_id, "ann-0", label, annotations=[_span(a, 0, 99)]),
        )
    assert await _count(core, models.ComparisonRow) == 0
    assert await _count(core, models.ErrorAnnotationRow) == 0
    status = await core.db.run_sync(lambda s: s.scalar(select(models.AssignmentRow.status)))
    assert status == "assigned"
    await labelling.submit_task(
        core,
        SVC,
        "key-00401",
        labelling.TaskSubmission(task_id, "ann-0", label, annotations=[_span(a, 7, 8)]),
    )
    stored = await core.db.run_sync(
        lambda s: [
            (e.response_id, e.span_start, e.span_end)
            for e in s.scalars(select(models.ErrorAnnotationRow))
        ]
    )
    assert stored == [(a, 7, 8)]


async def test_progress_counts_labels_skips_and_what_the_queue_still_holds(core: Core) -> None:
    await _setup(core)  # ann-0, ann-1
    await ingest.register_annotator(core, ALICE, Annotator("ann-a", "physician", ""))
    await ingest.register_annotator(core, LEAD, Annotator("ann-l", "physician", ""))
    specs = []
    for i in range(3):
        pid, rids = await _prompt(core, f"Progress question {i}")
        specs.append(queue.TaskSpec(pid, tuple(rids)))
    full, t1, t2 = (
        await labelling.create_tasks(core, WHO, "tasks-prog", "prog", specs, 2, GUIDE)
    ).ids
    pid, rids = await _prompt(core, "Another batch's question")
    await labelling.create_tasks(
        core, WHO, "tasks-other", "other", [queue.TaskSpec(pid, tuple(rids))], 1, GUIDE
    )

    async def counts(caller: Caller = ALICE, who: str = "", batch: str = "prog") -> tuple[int, ...]:
        p = await labelling.get_progress(core, caller, who, batch)
        return p.labelled_today, p.labelled_total, p.remaining, p.skipped

    assert await counts() == (0, 0, 3, 0)
    assert await counts(batch="") == (0, 0, 4, 0)
    # The first task's two slots go to ann-0 and ann-1: no longer Alice's to do.
    for other in ("ann-0", "ann-1"):
        view = await labelling.next_task(core, SVC, other, "prog")
        assert view is not None and view.task.id == full
    assert await counts() == (0, 0, 2, 0)
    view = await labelling.next_task(core, ALICE, "", "prog")
    assert view is not None and view.task.id == t1
    assert await counts() == (0, 0, 2, 0)  # t1 assigned to her, t2 assignable
    a, b = view.task.response_ids
    await labelling.submit_task(
        core,
        ALICE,
        "key-00500",
        labelling.TaskSubmission(t1, "", ComparisonIn(LabelMeta("", GUIDE), a, b, "a")),
    )
    # t1 keeps an open slot, but not for her: she labelled it.
    assert await counts() == (1, 1, 1, 0)
    view = await labelling.next_task(core, ALICE, "", "prog")
    assert view is not None and view.task.id == t2
    await labelling.skip_task(core, ALICE, t2, "", "outside my specialty")
    assert await counts() == (1, 1, 0, 1)
    assert await counts(batch="") == (1, 1, 1, 1)
    # Labelled before today's midnight (UTC): in the total, not today.
    await core.db.run_write(
        lambda s: s.execute(
            update(models.AssignmentRow)
            .where(models.AssignmentRow.task_id == t1)
            .values(completed_at=now() - timedelta(days=1, hours=1))
        )
    )
    assert await counts() == (0, 1, 0, 1)

    # A clinician reads only their own; a clinical lead anyone's, or their own.
    with pytest.raises(PermissionDenied, match=r"^annotator_id: 'ann-0' is not you"):
        await counts(who="ann-0")
    assert await counts(who="ann-a") == (0, 1, 0, 1)
    assert await counts(LEAD, who="ann-a") == (0, 1, 0, 1)
    lead_own = await labelling.get_progress(core, LEAD, "", "prog")
    assert (lead_own.annotator_id, lead_own.remaining) == ("ann-l", 2)  # t1 and t2
    with pytest.raises(NotFound, match=r"^annotator_id: annotator 'ann-zz' not found"):
        await counts(LEAD, who="ann-zz")
    with pytest.raises(InvalidArgument, match=r"^annotator_id: is required"):
        await counts(SVC)
    assert await counts(SVC, who="ann-0") == (0, 0, 3, 0)  # its first task, then t1 and t2


def test_a_request_without_the_new_fields_digests_as_before_the_upgrade() -> None:
    """A key used before the fields existed (its digest over the records' plain reprs)
    still replays; setting a new field makes another request."""
    meta = LabelMeta("ann-0", GUIDE, "task_1")
    plain = labelling.TaskSubmission(
        "task_1",
        "ann-0",
        ComparisonIn(meta, "r_a", "r_b", "a"),
        [],
        [ErrorAnnotationIn(meta, "r_a", "omission", "why", "high")],
    )

    def before(*parts: object) -> str:
        # The reprs without the fields added later, as the previous release hashed them.
        text = repr(parts)
        for added in (", span_start=None, span_end=None", ", presented_response_ids=()"):
            text = text.replace(added, "")
        return hashlib.sha256(text.encode()).hexdigest()

    assert "span_start=None" in repr(plain) and "presented_response_ids=()" in repr(plain)
    assert store.request_digest("submit_task", plain) == before("submit_task", plain)
    annotations = [ErrorAnnotationIn(meta, "r_a", "omission", "", "", None, None)]
    assert store.request_digest("x", annotations) == before("x", annotations)
    assert (
        store.request_digest("x", (1,), ())
        == hashlib.sha256(repr(("x", (1,), ())).encode()).hexdigest()
    )
    with_order = labelling.TaskSubmission(
        "task_1", "ann-0", plain.label, [], plain.annotations, ("r_b", "r_a")
    )
    with_span = labelling.TaskSubmission(
        "task_1",
        "ann-0",
        plain.label,
        [],
        [ErrorAnnotationIn(meta, "r_a", "omission", "why", "high", 0, 3)],
    )
    digests = {store.request_digest("submit_task", s) for s in (plain, with_order, with_span)}
    assert len(digests) == 3
