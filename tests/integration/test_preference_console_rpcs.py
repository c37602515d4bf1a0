"""What the clinician console asks of PreferenceService, through real gRPC on SQLite and
PostgreSQL, as the clinician (and clinical lead) it acts for: the order a task's responses
were shown in and the span an error concerns, stored with the label or refused by name with
nothing written; the annotator's progress, their own only unless they lead; each
annotator's agreement and the position bias of a batch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest
from sqlalchemy import select

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.preference import models
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc
from tests.conftest import client, reset_tables, serving
from tests.integration.test_preference_service import (
    GUIDE,
    Harness,
    _error,
    stand_in_redactor,
)

Token = Callable[[Role], str]
Stub = preference_pb2_grpc.PreferenceServiceStub


@dataclass
class Callers:
    admin: Harness  # registers, ingests, creates tasks; labels as ann-0
    clinician: Stub  # local-clinician, registered as ann-c
    lead: Stub  # local-clinical-lead, registered as ann-l
    engineer: Stub


@pytest.fixture
async def callers(
    common: CommonSettings, token: Token, database_url: str
) -> AsyncIterator[Callers]:
    reset_tables(database_url, models.Base)
    app = PreferenceApp(
        common,
        PreferenceSettings(port=0, database_url=database_url, max_text_chars=2000, max_batch=50),
        redact=stand_in_redactor,
    )
    async with (
        serving(app, common) as running,
        client(running, common, token(Role.ADMIN)) as admin,
        client(running, common, token(Role.CLINICIAN)) as clinician,
        client(running, common, token(Role.CLINICAL_LEAD)) as lead,
        client(running, common, token(Role.ML_ENGINEER)) as engineer,
    ):
        h = Harness(Stub(admin), app)
        await h.setup(annotators=1)
        for stub, me in ((Stub(clinician), "ann-c"), (Stub(lead), "ann-l")):
            await stub.RegisterAnnotator(
                pb.RegisterAnnotatorRequest(annotator=pb.Annotator(id=me, role="physician"))
            )
        yield Callers(h, Stub(clinician), Stub(lead), Stub(engineer))


async def _tasks(h: Harness, batch: str, n: int, overlap: int = 2) -> list[str]:
    specs = []
    for i in range(n):
        pid, rids = await h.prompt_with(2, f"{batch} question {i}")
        specs.append(pb.TaskSpec(prompt_id=pid, response_ids=rids))
    created = await h.stub.CreateTasks(
        pb.CreateTasksRequest(
            idempotency_key=h.key(),
            batch_id=batch,
            tasks=specs,
            overlap=overlap,
            guideline_version=GUIDE,
        )
    )
    return list(created.task_ids)


def _choose(task: pb.Task, first_shown: bool) -> pb.Comparison:
    """A comparison of the task's responses (in the order shown) that prefers the one
    shown first, or the other one."""
    a, b = (r.id for r in task.responses)
    return pb.Comparison(
        context=pb.LabelContext(guideline_version=GUIDE),
        response_a_id=a,
        response_b_id=b,
        preference=pb.PREFERENCE_A if first_shown else pb.PREFERENCE_B,
    )


async def test_presented_order_and_error_spans_are_stored_or_refused_by_name(
    callers: Callers,
) -> None:
    h, me = callers.admin, callers.clinician
    (task_id,) = await _tasks(h, "console", 1)
    task = (await me.NextTask(pb.NextTaskRequest(batch_id="console"))).task
    shown = [r.id for r in task.responses]
    first_text = task.responses[0].text
    label = _choose(task, first_shown=True)

    def submit(presented: list[str], *spans: tuple[int | None, int | None]) -> pb.SubmitTaskRequest:
        annotations = []
        for start, end in spans:
            annotation = pb.ErrorAnnotation(
                context=pb.LabelContext(guideline_version=GUIDE),
                response_id=shown[0],
                category=common_pb2.ERROR_CATEGORY_OMISSION,
            )
            if start is not None:
                annotation.span_start = start
            if end is not None:
                annotation.span_end = end
            annotations.append(annotation)
        return pb.SubmitTaskRequest(
            idempotency_key=h.key(),
            task_id=task_id,
            comparison=label,
            annotations=annotations,
            presented_response_ids=presented,
        )

    for request, expected in (
        (submit(shown[:1]), "presented_response_ids: must list task"),
        (submit([shown[0], shown[0]]), "presented_response_ids: must list task"),
        (submit(shown, (0, 4), (2, None)), "annotations[1].span_end: is required with span_start"),
        (submit(shown, (4, 2)), "annotations[0].span_end: must be greater than span_start (4)"),
        (
            submit(shown, (0, len(first_text) + 1)),
            f"annotations[0].span_end: is {len(first_text) + 1}, past the end of response",
        ),
    ):
        err = await _error(me.SubmitTask(request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert (err.details() or "").startswith(expected), (expected, err.details())
    assert await h.count(models.ComparisonRow) == 0
    assert await h.count(models.ErrorAnnotationRow) == 0

    await me.SubmitTask(submit(shown, (0, 6), (None, None)))
    stored = await h.app.db.run_sync(
        lambda s: (
            list(s.scalars(select(models.AssignmentRow.presented_response_ids))),
            sorted(
                (e.span_start or 0, e.span_end or 0, e.annotator_id)
                for e in s.scalars(select(models.ErrorAnnotationRow))
            ),
        )
    )
    assert stored == ([shown], [(0, 0, "ann-c"), (0, 6, "ann-c")])
    # Outside the queue too, checked against the stored text.
    direct = pb.ErrorAnnotation(
        context=pb.LabelContext(guideline_version=GUIDE),
        response_id=shown[1],
        category=common_pb2.ERROR_CATEGORY_OMISSION,
        span_start=0,
        span_end=len(task.responses[1].text),
    )
    await me.SubmitErrorAnnotations(
        pb.SubmitErrorAnnotationsRequest(idempotency_key=h.key(), annotations=[direct])
    )
    direct.span_end += 1
    too_far = await _error(
        me.SubmitErrorAnnotations(
            pb.SubmitErrorAnnotationsRequest(idempotency_key=h.key(), annotations=[direct])
        )
    )
    assert (too_far.details() or "").startswith("annotations[0].span_end: is ")
    assert await h.count(models.ErrorAnnotationRow) == 3

    got = await h.stub.GetAgreement(pb.GetAgreementRequest(batch_id="console"))
    assert (got.report.position_labels, got.report.first_shown_share) == (1, 1.0)
    assert [(x.annotator_id, x.labels, x.HasField("agreement")) for x in got.annotators] == [
        ("ann-c", 1, False)
    ]


async def test_progress_is_the_clinicians_own_and_any_annotators_for_a_lead(
    callers: Callers,
) -> None:
    h, me, lead = callers.admin, callers.clinician, callers.lead
    t1, t2, _t3 = await _tasks(h, "prog", 3)

    async def mine(stub: Stub = me, who: str = "") -> tuple[str, int, int, int, int]:
        p = await stub.GetProgress(pb.GetProgressRequest(annotator_id=who, batch_id="prog"))
        return p.annotator_id, p.labelled_today, p.labelled_total, p.remaining, p.skipped

    assert await mine() == ("ann-c", 0, 0, 3, 0)
    task = (await me.NextTask(pb.NextTaskRequest(batch_id="prog"))).task
    assert task.id == t1
    await me.SubmitTask(
        pb.SubmitTaskRequest(
            idempotency_key=h.key(), task_id=t1, comparison=_choose(task, first_shown=False)
        )
    )
    assert await mine() == ("ann-c", 1, 1, 2, 0)
    assert (await me.NextTask(pb.NextTaskRequest(batch_id="prog"))).task.id == t2
    await me.SkipTask(pb.SkipTaskRequest(task_id=t2, reason="outside my specialty"))
    assert await mine() == ("ann-c", 1, 1, 1, 1)

    other = await _error(me.GetProgress(pb.GetProgressRequest(annotator_id="ann-0")))
    assert other.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (other.details() or "").startswith("annotator_id: 'ann-0' is not you")
    assert await mine(lead, "ann-c") == ("ann-c", 1, 1, 1, 1)
    assert await mine(lead) == ("ann-l", 0, 0, 3, 0)
    assert await mine(h.stub, "ann-0") == ("ann-0", 0, 0, 3, 0)
    unnamed = await _error(h.stub.GetProgress(pb.GetProgressRequest()))
    assert unnamed.code() == grpc.StatusCode.INVALID_ARGUMENT
    refused = await _error(callers.engineer.GetProgress(pb.GetProgressRequest()))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_agreement_lists_each_annotator_and_the_first_shown_share(
    callers: Callers,
) -> None:
    """ann-0 (named by the admin) and ann-c (the clinician) label two tasks, each shown in
    the task's own order: ann-0 prefers the first response twice, ann-c once then the
    second. They agree on one task of two, so each agrees in one of two pairings; three
    of the four labels chose the response shown first."""
    h, me = callers.admin, callers.clinician
    tasks = await _tasks(h, "agree", 2)
    picks = {
        "ann-0": (pb.PREFERENCE_A, pb.PREFERENCE_A),
        "ann-c": (pb.PREFERENCE_A, pb.PREFERENCE_B),
    }
    for who, preferences in picks.items():
        stub, named = (h.stub, who) if who == "ann-0" else (me, "")
        for tid, preference in zip(tasks, preferences, strict=True):
            task = (await stub.NextTask(pb.NextTaskRequest(annotator_id=named))).task
            assert task.id == tid
            order = await h.app.db.run_sync(lambda s, t=tid: s.get(models.TaskRow, t).response_ids)
            await stub.SubmitTask(
                pb.SubmitTaskRequest(
                    idempotency_key=h.key(),
                    task_id=tid,
                    annotator_id=named,
                    comparison=pb.Comparison(
                        context=pb.LabelContext(guideline_version=GUIDE),
                        response_a_id=order[0],
                        response_b_id=order[1],
                        preference=preference,
                    ),
                    presented_response_ids=order,
                )
            )
    got = await callers.lead.GetAgreement(pb.GetAgreementRequest(batch_id="agree"))
    assert [(x.annotator_id, x.labels, x.agreement) for x in got.annotators] == [
        ("ann-0", 2, 0.5),
        ("ann-c", 2, 0.5),
    ]
    assert got.report.raw_agreement == pytest.approx(0.5)
    assert (got.report.position_labels, got.report.first_shown_share) == (4, 0.75)
