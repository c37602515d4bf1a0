"""The preference store's use cases called directly, without gRPC: each validates its input
before it writes (the error names the field), runs its writes and their audit entries in
one transaction (a batch with one bad item writes nothing), replays a retried key, and
records the principal it is given."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from clinalign.preference import models, queue, snapshots
from clinalign.preference.domain import (
    Annotator,
    ComparisonIn,
    CorrectionIn,
    ErrorAnnotationIn,
    LabelMeta,
    Limits,
    PromptIn,
    RankingIn,
    RatingIn,
    ResponseIn,
)
from clinalign.preference.identity import Caller
from clinalign.preference.server import MIGRATIONS
from clinalign.preference.usecases import Core, auditing, exports, ingest, labelling
from tests.conftest import reset_tables

GUIDE = "2026-11"
WHO = "ml-engineer-7"  # the principal the servicer would pass
SVC = Caller(WHO, person=False, names_annotators=True)  # a service naming annotators


def _service(name: str) -> Caller:
    return Caller(name, person=False, names_annotators=True)


@pytest.fixture
def core(database_url: str) -> Iterator[Core]:
    reset_tables(database_url, models.Base)
    db = Database(database_url, models.Base, migrations=MIGRATIONS)
    db.create_schema()
    yield Core(db, lambda text: text.replace("Jane Roe", "[NAME]"), Limits(200, 3, 2))
    db.dispose()


async def _count(core: Core, table: type[models.Base]) -> int:
    return await core.db.run_sync(
        lambda s: int(s.scalar(select(func.count()).select_from(table)) or 0)
    )


async def _audit(core: Core) -> list[tuple[str, str]]:
    page = await auditing.list_audit_events(core, 0, "")
    return [(e.principal, e.action) for e in page.items]


def _meta(annotator: str = "ann-0", task_id: str | None = None) -> LabelMeta:
    return LabelMeta(annotator, GUIDE, task_id)


async def _setup(core: Core, annotators: int = 2) -> None:
    for i in range(annotators):
        await ingest.register_annotator(core, SVC, Annotator(f"ann-{i}", "physician", ""))
    await ingest.publish_guidelines(core, WHO, GUIDE, "Prefer the safer answer.")


async def _prompt(core: Core, text: str = "Chest pain?", n: int = 2) -> tuple[str, list[str]]:
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    pid = (await ingest.submit_prompts(core, WHO, f"p-{key}", [PromptIn(text, "curated")])).ids[0]
    responses = [ResponseIn(pid, f"Answer {i} to {text}", "policy-v1") for i in range(n)]
    rids = (await ingest.submit_responses(core, WHO, f"r-{key}", responses)).ids
    return pid, rids


async def test_register_annotator_and_guidelines_validate_before_they_write(core: Core) -> None:
    with pytest.raises(InvalidArgument, match=r"^annotator: is required"):
        await ingest.register_annotator(core, SVC, None)
    with pytest.raises(InvalidArgument, match=r"^annotator\.id: must be a pseudonymous id"):
        await ingest.register_annotator(core, SVC, Annotator("jane@example.org", "nurse", ""))
    with pytest.raises(InvalidArgument, match=r"^version: is required: lower-case"):
        await ingest.publish_guidelines(core, WHO, "Version 1", "text")
    with pytest.raises(InvalidArgument, match=r"^text: must not be empty"):
        await ingest.publish_guidelines(core, WHO, GUIDE, "  ")
    assert await _audit(core) == []
    await _setup(core, annotators=1)
    again = await ingest.publish_guidelines(core, WHO, GUIDE, "Prefer the safer answer.")
    assert again == GUIDE
    with pytest.raises(InvalidArgument, match=r"^version: '2026-11' is published already"):
        await ingest.publish_guidelines(core, WHO, GUIDE, "Something else.")
    assert await _audit(core) == [(WHO, "register_annotator"), (WHO, "publish_guidelines")]


async def test_submit_checks_the_whole_batch_before_writing(core: Core) -> None:
    with pytest.raises(InvalidArgument, match=r"^prompts: must hold at least one item"):
        await ingest.submit_prompts(core, WHO, "key-00001", [])
    with pytest.raises(InvalidArgument, match=r"^prompts: holds 4; at most 3 per call"):
        await ingest.submit_prompts(core, WHO, "key-00001", [PromptIn("q", "curated")] * 4)
    with pytest.raises(InvalidArgument, match=r"^prompts\[1\]\.source: must be one of"):
        await ingest.submit_prompts(
            core, WHO, "key-00001", [PromptIn("q", "curated"), PromptIn("q", "")]
        )
    with pytest.raises(InvalidArgument, match=r"^prompts\[0\]\.tags: at most 2 tags"):
        await ingest.submit_prompts(core, WHO, "key-00001", [PromptIn("q", "curated", ("a",) * 3)])
    with pytest.raises(InvalidArgument, match=r"^prompts\[0\]\.text: is 201 characters"):
        await ingest.submit_prompts(core, WHO, "key-00001", [PromptIn("x" * 201, "curated")])
    # Malformed generation parameters are named before any other problem of the batch.
    bad_json = [ResponseIn("", "An answer."), ResponseIn("p_1", "Another.", "v1", "{")]
    with pytest.raises(InvalidArgument, match=r"^responses\[1\]\.generation_params_json: must"):
        await ingest.submit_responses(core, WHO, "key-00002", bad_json)
    with pytest.raises(InvalidArgument, match=r"^responses\[0\]\.prompt_id: is required"):
        await ingest.submit_responses(core, WHO, "key-00002", [ResponseIn("", "An answer.")])
    with pytest.raises(NotFound, match=r"^responses\[0\]\.prompt_id: prompt 'p_nope' not found"):
        await ingest.submit_responses(core, WHO, "key-00002", [ResponseIn("p_nope", "An answer.")])
    assert await _count(core, models.PromptRow) == 0
    assert await _audit(core) == []


async def test_a_batch_is_written_whole_once_per_key_and_de_identified(core: Core) -> None:
    await _setup(core)
    pid, (a, b) = await _prompt(core, "Jane Roe has chest pain.")
    _, (c, _) = await _prompt(core, "A different question.")
    good = ComparisonIn(_meta(), a, b, "a", 0.8)
    audit_before = len(await _audit(core))
    # The second comparison pairs answers to different prompts: the first is not written.
    with pytest.raises(InvalidArgument, match=r"^comparisons\[1\]\.response_b_id: answers a diff"):
        await ingest.submit_comparisons(
            core, SVC, "batch-0001", [good, ComparisonIn(_meta(), a, c, "b")]
        )
    with pytest.raises(NotFound, match=r"^comparisons\[0\]\.context\.annotator_id: annotator"):
        await ingest.submit_comparisons(
            core, SVC, "batch-0001", [ComparisonIn(_meta("ann-9"), a, b, "a")]
        )
    with pytest.raises(InvalidArgument, match=r"^comparisons\[0\]\.strength: must be in \[0, 1\]"):
        await ingest.submit_comparisons(
            core, SVC, "batch-0001", [ComparisonIn(_meta(), a, b, "a", 2)]
        )
    with pytest.raises(InvalidArgument, match=r"^idempotency_key: is required: 8 to 128"):
        await ingest.submit_comparisons(core, SVC, "short", [good])
    assert await _count(core, models.ComparisonRow) == 0
    assert len(await _audit(core)) == audit_before

    first = await ingest.submit_comparisons(core, SVC, "batch-0001", [good])
    again = await ingest.submit_comparisons(core, SVC, "batch-0001", [good])
    assert (first.replayed, again.replayed, again.ids) == (False, True, first.ids)
    assert await _count(core, models.ComparisonRow) == 1
    # The same key with another request is refused, and writes nothing.
    other = ComparisonIn(_meta(), a, b, "b")
    with pytest.raises(InvalidArgument, match=r"^idempotency_key: was already used for a diff"):
        await ingest.submit_comparisons(core, SVC, "batch-0001", [other])
    # Keys are each caller's own: another caller's "batch-0001" is its own batch, and it
    # never sees the first caller's ids.
    theirs = await ingest.submit_comparisons(core, _service("someone-else"), "batch-0001", [good])
    assert not theirs.replayed and theirs.ids != first.ids
    assert await _count(core, models.ComparisonRow) == 2
    with pytest.raises(InvalidArgument, match=r"^idempotency_key: was already used for submit_co"):
        await ingest.submit_ratings(core, SVC, "batch-0001", [RatingIn(_meta(), a, "safety", 4)])
    with pytest.raises(InvalidArgument, match=r"^ratings\[0\]\.score: must be between 1 and 5"):
        await ingest.submit_ratings(core, SVC, "key-00003", [RatingIn(_meta(), a, "safety", 6)])
    assert (await _audit(core))[-1] == ("someone-else", "submit_comparisons")

    fixed = await ingest.submit_corrections(
        core,
        SVC,
        "key-00004",
        [CorrectionIn(_meta("ann-1"), a, "Call 999: Jane Roe may have angina.")],
    )
    prompt, responses = await ingest.get_prompt(core, pid)
    assert prompt.text == "[NAME] has chest pain." and prompt.created_by == WHO
    human = [r for r in responses if r.model_version == "human:ann-1"]
    assert [r.text for r in human] == ["Call 999: [NAME] may have angina."]
    assert len(fixed.ids) == 1 and await _count(core, models.ComparisonRow) == 3


async def test_get_prompt_names_the_missing_field(core: Core) -> None:
    with pytest.raises(InvalidArgument, match=r"^id: is required"):
        await ingest.get_prompt(core, "")
    with pytest.raises(NotFound, match=r"^id: prompt 'p_nope' not found"):
        await ingest.get_prompt(core, "p_nope")


async def test_queue_use_cases_validate_and_attribute_a_label_to_the_task(core: Core) -> None:
    await _setup(core)
    pid, rids = await _prompt(core)
    spec = queue.TaskSpec(pid, tuple(rids))
    with pytest.raises(InvalidArgument, match=r"^overlap: must be between 1 and 10, got 0"):
        await labelling.create_tasks(core, WHO, "key-00010", "b1", [spec], 0, GUIDE)
    with pytest.raises(InvalidArgument, match=r"^tasks: holds 4; at most 3 per call"):
        await labelling.create_tasks(core, WHO, "key-00010", "b1", [spec] * 4, 1, GUIDE)
    with pytest.raises(NotFound, match=r"^guideline_version: guideline version 'v9' not found"):
        await labelling.create_tasks(core, WHO, "key-00010", "b1", [spec], 1, "v9")
    (task_id,) = (await labelling.create_tasks(core, WHO, "key-00010", "b1", [spec], 1, GUIDE)).ids
    with pytest.raises(InvalidArgument, match=r"^annotator_id: is required"):
        await labelling.next_task(core, SVC, "", "")
    view = await labelling.next_task(core, SVC, "ann-0", "b1")
    assert view is not None and view.task.id == task_id

    a, b = rids
    # The label's own context names another annotator: the task's assignee is recorded.
    label = ComparisonIn(_meta("ann-1"), a, b, "b")
    for sub, message in (
        (labelling.TaskSubmission("", "ann-0", label), r"^task_id: is required"),
        (labelling.TaskSubmission(task_id, "", label), r"^annotator_id: is required"),
        (
            labelling.TaskSubmission(task_id, "ann-0", ComparisonIn(_meta(), a, b, "")),
            r"^comparison\.preference: must be PREFERENCE_A",
        ),
        (
            labelling.TaskSubmission(task_id, "ann-0", RankingIn(_meta(), (a,))),
            r"^ranking\.response_ids: must rank at least two",
        ),
        (
            labelling.TaskSubmission(
                task_id, "ann-0", label, ratings=[RatingIn(_meta(), a, "beauty", 3)]
            ),
            r"^ratings\[0\]\.axis: must be one of",
        ),
        (labelling.TaskSubmission(task_id, "ann-0", None), r"^label: is required"),
        (labelling.TaskSubmission(task_id, "ann-1", label), r"^annotator_id: was not assigned"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            await labelling.submit_task(core, SVC, "key-00011", sub)
    assert await _count(core, models.ComparisonRow) == 0

    done = await labelling.submit_task(
        core, SVC, "key-00011", labelling.TaskSubmission(task_id, "ann-0", label)
    )
    stored = await core.db.run_sync(
        lambda s: [
            (c.id, c.annotator_id, c.task_id) for c in s.scalars(select(models.ComparisonRow))
        ]
    )
    assert stored == [(done.ids[0], "ann-0", task_id)]
    assert (await _audit(core))[-1] == (WHO, "submit_task")


async def test_skip_task_checks_the_reason_and_audits_the_principal(core: Core) -> None:
    await _setup(core)
    pid, rids = await _prompt(core)
    spec = queue.TaskSpec(pid, tuple(rids))
    (task_id,) = (await labelling.create_tasks(core, WHO, "key-00020", "b1", [spec], 1, GUIDE)).ids
    await labelling.next_task(core, SVC, "ann-0", "")
    with pytest.raises(InvalidArgument, match=r"^reason: is 201 characters; at most 200"):
        await labelling.skip_task(core, SVC, task_id, "ann-0", "x" * 201)
    with pytest.raises(InvalidArgument, match=r"^task_id: is required"):
        await labelling.skip_task(core, SVC, "", "ann-0", "")
    await labelling.skip_task(
        core, _service("clinician-3"), task_id, "ann-0", "Jane Roe is my patient"
    )
    reason = await core.db.run_sync(lambda s: s.scalar(select(models.AssignmentRow.reason)))
    assert reason == "[NAME] is my patient"
    assert (await _audit(core))[-1] == ("clinician-3", "skip_task")
    assert await labelling.next_task(core, SVC, "ann-0", "") is None


async def test_agreement_threshold_is_checked(core: Core) -> None:
    with pytest.raises(InvalidArgument, match=r"^adjudication_threshold: must be in \(0, 1\]"):
        await labelling.get_agreement(core, "", 1.5)
    empty = await labelling.get_agreement(core, "", labelling.DEFAULT_ADJUDICATION_THRESHOLD)
    assert empty.report.items == 0 and empty.adjudication == []


async def _queue_batch(core: Core, batch: str, votes: dict[str, str]) -> None:
    """Two annotators label a two-task batch: ``votes`` gives each one's preference."""
    specs = []
    for i in range(2):
        pid, rids = await _prompt(core, f"Batch {batch} question {i}")
        specs.append(queue.TaskSpec(pid, tuple(rids)))
    await labelling.create_tasks(core, WHO, f"tasks-{batch}", batch, specs, 2, GUIDE)
    for annotator, preference in votes.items():
        for i in range(2):
            view = await labelling.next_task(core, SVC, annotator, batch)
            assert view is not None
            a, b = view.task.response_ids
            await labelling.submit_task(
                core,
                SVC,
                f"label-{batch}-{annotator}-{i}",
                labelling.TaskSubmission(
                    view.task.id, annotator, ComparisonIn(_meta(annotator), a, b, preference)
                ),
            )


async def test_min_agreement_admits_agreeing_batches_and_direct_labels(core: Core) -> None:
    await _setup(core)
    await _queue_batch(core, "agree", {"ann-0": "a", "ann-1": "a"})
    await _queue_batch(core, "split", {"ann-0": "a", "ann-1": "b"})
    _, (a, b) = await _prompt(core, "A directly submitted question")
    await ingest.submit_comparisons(core, SVC, "direct-01", [ComparisonIn(_meta(), a, b, "a")])

    async def pairs(min_agreement: float) -> int:
        f = snapshots.Filter(min_agreement=min_agreement, eval_fraction=0.5)
        row = await exports.create_snapshot(core, WHO, f)
        return row.train_pairs + row.eval_pairs

    assert await pairs(0.0) == 9  # 4 + 4 queued labels and the direct one
    assert await pairs(0.5) == 5  # the split batch's labels are left out


async def test_snapshot_filter_is_checked_and_normalised(core: Core) -> None:
    for f, message in (
        (snapshots.Filter(sources=("curated", "")), r"^filter\.sources\[1\]: must be a PROMPT_"),
        (snapshots.Filter(tie_handling=""), r"^filter\.tie_handling: must be a TIE_HANDLING_"),
        (
            snapshots.Filter(
                start=datetime(2026, 2, 1, tzinfo=UTC), end=datetime(2026, 1, 1, tzinfo=UTC)
            ),
            r"^filter\.start_time: must be before filter\.end_time",
        ),
        (snapshots.Filter(min_agreement=1.5), r"^filter\.min_agreement: must be in \[0, 1\]"),
        (snapshots.Filter(eval_fraction=0.9), r"^filter\.eval_fraction: must be in \(0, 0\.5\]"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            await exports.create_snapshot(core, WHO, f)
    assert await _audit(core) == []
    row = await exports.create_snapshot(
        core, WHO, snapshots.Filter(sources=("production", "curated", "production"))
    )
    assert row.filter["sources"] == ["curated", "production"] and row.created_by == WHO
    assert await _audit(core) == [(WHO, "create_snapshot")]


async def test_export_checks_its_arguments_audits_and_chunks_the_file(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _setup(core)
    for i in range(6):
        _, (a, b) = await _prompt(core, f"Export question {i}")
        await ingest.submit_comparisons(
            core, SVC, f"export-{i:04d}", [ComparisonIn(_meta(), a, b, "b")]
        )
    snap = await exports.create_snapshot(core, WHO, snapshots.Filter(eval_fraction=0.5))
    pref, jsonl = snapshots.PREFERENCE, exports.JSONL
    for args, message in (
        (("", jsonl, pref, None), r"^id: is required: a snapshot id or content hash"),
        ((snap.id, "", pref, None), r"^format: must be EXPORT_FORMAT_JSONL or EXPORT_FORMAT_PARQ"),
        ((snap.id, jsonl, "", None), r"^kind: must be EXPORT_KIND_PREFERENCE, EXPORT_KIND_SFT or"),
        ((snap.id, jsonl, pref, "test"), r"^split: must be SPLIT_TRAIN, SPLIT_EVAL"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            await exports.export_snapshot(core, WHO, *args)
    with pytest.raises(NotFound, match=r"^id: snapshot 'snap-nope' not found"):
        await exports.export_snapshot(core, WHO, "snap-nope", jsonl, pref, None)
    audit_before = await _audit(core)

    monkeypatch.setattr(snapshots, "CHUNK_BYTES", 100)
    export = await exports.export_snapshot(core, "reader-2", snap.content_hash, jsonl, pref, None)
    data = b"".join(export.chunks)
    assert len(export.chunks) == -(-len(data) // 100) > 1
    assert export.sha256 == hashlib.sha256(data).hexdigest()
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert export.records == len(lines) == 6
    assert {line["split"] for line in lines} <= {"train", "eval"}
    assert await _audit(core) == [*audit_before, ("reader-2", "export_snapshot")]
    train = await exports.export_snapshot(core, WHO, snap.id, jsonl, pref, snapshots.TRAIN)
    assert train.records == snap.train_pairs
    empty = await exports.export_snapshot(core, WHO, snap.id, jsonl, snapshots.SFT, None)
    assert (empty.records, empty.chunks) == (0, [b""])


async def test_list_use_cases_page_and_check_their_tokens(core: Core) -> None:
    await _setup(core, annotators=3)
    with pytest.raises(InvalidArgument, match=r"^page_size: must be between 0 and 1000, got 1001"):
        await auditing.list_audit_events(core, 1001, "")
    with pytest.raises(InvalidArgument, match=r"^page_token: is not a token this service issued"):
        await exports.list_snapshots(core, 0, "not-a-token")
    first = await auditing.list_audit_events(core, 2, "")
    rest = await auditing.list_audit_events(core, 2, first.next_page_token)
    last = await auditing.list_audit_events(core, 2, rest.next_page_token)
    assert [e.seq for e in first.items + rest.items] == [1, 2, 3, 4]
    assert (last.items, last.next_page_token) == ([], "")
    verified = await auditing.verify_audit(core)
    assert (verified.ok, verified.entries) == (True, 4)


async def test_harm_records_carry_annotated_faults_and_judged_clean_answers(core: Core) -> None:
    """The cost model's records (issue 21): every model-written answer a label judged, its
    annotated categories and highest severity; an answer only compared is clean; the
    human rewrite a correction stores is not a model's answer; an unjudged one is absent."""
    await _setup(core)
    _, (a, b, unjudged) = await _prompt(core, "Can I take ibuprofen with a stomach ulcer?", n=3)
    await ingest.submit_comparisons(core, SVC, "harm-cmp", [ComparisonIn(_meta(), a, b, "b")])
    await ingest.submit_error_annotations(
        core,
        SVC,
        "harm-ann",
        [
            ErrorAnnotationIn(_meta("ann-0"), a, "unsafe_advice", "", "high"),
            ErrorAnnotationIn(_meta("ann-1"), a, "omission", "", "moderate"),
            ErrorAnnotationIn(_meta("ann-1"), a, "unsafe_advice", "", ""),
        ],
    )
    await ingest.submit_corrections(
        core, SVC, "harm-fix", [CorrectionIn(_meta(), b, "Do not take ibuprofen; ask a GP.")]
    )
    snap = await exports.create_snapshot(core, WHO, snapshots.Filter())
    export = await exports.export_snapshot(core, WHO, snap.id, exports.JSONL, snapshots.HARM, None)
    records = [json.loads(line) for line in b"".join(export.chunks).decode().splitlines()]
    by_id = {r["response_id"]: r for r in records}
    assert set(by_id) == {a, b}  # the rewrite is a person's; the third answer was not judged
    assert by_id[a]["categories"] == ["omission", "unsafe_advice"]
    assert by_id[a]["severity"] == "high"  # the highest given
    assert by_id[a]["annotators"] == ["ann-0", "ann-1"]
    assert by_id[b]["categories"] == [] and by_id[b]["severity"] == ""
    assert by_id[a]["model_version"] == "policy-v1" and by_id[a]["response"].startswith("Answer 0")
    assert unjudged not in by_id
    assert snap.manifest["counts"]["harm_train"] + snap.manifest["counts"]["harm_eval"] == 2


async def test_an_annotation_severity_outside_the_scale_is_refused_by_name(core: Core) -> None:
    await _setup(core)
    _, (a, _) = await _prompt(core)
    with pytest.raises(InvalidArgument, match=r"^annotations\[0\]\.severity: must be SEVERITY_"):
        await ingest.submit_error_annotations(
            core, SVC, "bad-sev", [ErrorAnnotationIn(_meta(), a, "omission", "", "#9")]
        )


def _person(name: str) -> Caller:
    return Caller(name, person=True, names_annotators=False)


async def test_a_clinician_registers_and_labels_only_as_themselves(core: Core) -> None:
    await _setup(core)  # ann-0 and ann-1, registered unlinked by a service
    pid, (a, b) = await _prompt(core)
    alice, bob = _person("oidc-alice"), _person("oidc-bob")
    # No linked record yet: refused, naming the way out.
    with pytest.raises(FailedPrecondition, match="no annotator is linked to 'oidc-alice'"):
        await ingest.submit_comparisons(
            core, alice, "key-10001", [ComparisonIn(_meta(""), a, b, "a")]
        )
    # A clinician cannot claim someone else's record, linked or not, nor register another.
    with pytest.raises(PermissionDenied, match=r"annotator\.id: 'ann-0' is another annotator's"):
        await ingest.register_annotator(core, alice, Annotator("ann-0", "physician", ""))
    with pytest.raises(PermissionDenied, match="registers only themselves"):
        await ingest.register_annotator(
            core, alice, Annotator("ann-a", "physician", "", "oidc-bob")
        )
    me = await ingest.register_annotator(core, alice, Annotator("ann-a", "physician", ""))
    assert me.subject == "oidc-alice"
    with pytest.raises(FailedPrecondition, match="'oidc-alice' is already annotator 'ann-a'"):
        await ingest.register_annotator(core, alice, Annotator("ann-a2", "physician", ""))
    # Labels name no one (themselves) or themselves; naming anyone else is refused and
    # nothing of the batch is written.
    mine = ComparisonIn(_meta(""), a, b, "a")
    forged = ComparisonIn(_meta("ann-1"), a, b, "b")
    with pytest.raises(
        PermissionDenied, match=r"comparisons\[1\]\.context\.annotator_id: 'ann-1' is not you"
    ):
        await ingest.submit_comparisons(core, alice, "key-10002", [mine, forged])
    assert await _count(core, models.ComparisonRow) == 0
    await ingest.submit_comparisons(core, alice, "key-10003", [mine])
    who = await core.db.run_sync(lambda s: s.scalar(select(models.ComparisonRow.annotator_id)))
    assert who == "ann-a"
    # The queue: a clinician's NextTask/SubmitTask/SkipTask are theirs.
    (task_id,) = (
        await labelling.create_tasks(
            core, WHO, "key-10004", "b9", [queue.TaskSpec(pid, (a, b))], 2, GUIDE
        )
    ).ids
    with pytest.raises(PermissionDenied, match=r"^annotator_id: 'ann-0' is not you"):
        await labelling.next_task(core, alice, "ann-0", "b9")
    view = await labelling.next_task(core, alice, "", "b9")
    assert view is not None and view.task.id == task_id
    with pytest.raises(PermissionDenied, match=r"^annotator_id: 'ann-1' is not you"):
        await labelling.submit_task(
            core, alice, "key-10005", labelling.TaskSubmission(task_id, "ann-1", forged)
        )
    with pytest.raises(InvalidArgument, match=r"^ratings\[0\]\.context\.annotator_id: must be"):
        await labelling.submit_task(
            core,
            alice,
            "key-10005",
            labelling.TaskSubmission(
                task_id, "", mine, ratings=[RatingIn(_meta("ann-1"), a, "safety", 4)]
            ),
        )
    await labelling.submit_task(
        core, alice, "key-10005", labelling.TaskSubmission(task_id, "", mine)
    )
    with pytest.raises(FailedPrecondition, match="no annotator is linked to 'oidc-bob'"):
        await labelling.skip_task(core, bob, task_id, "", "")


async def test_only_services_and_admins_link_and_only_admins_relink(core: Core) -> None:
    await _setup(core, annotators=1)
    engineer = Caller("eng", person=False, names_annotators=False)
    admin = Caller("ops", person=False, names_annotators=True, relinks=True)
    with pytest.raises(PermissionDenied, match="only a service or an admin links"):
        await ingest.register_annotator(core, engineer, Annotator("ann-0", "physician", "", "s1"))
    linked = await ingest.register_annotator(core, SVC, Annotator("ann-0", "physician", "", "s1"))
    assert linked.subject == "s1"
    # An update without a subject keeps the link.
    kept = await ingest.register_annotator(core, engineer, Annotator("ann-0", "nurse", ""))
    assert kept.subject == "s1"
    with pytest.raises(PermissionDenied, match="only an admin changes a link"):
        await ingest.register_annotator(core, SVC, Annotator("ann-0", "nurse", "", "s2"))
    with pytest.raises(FailedPrecondition, match="'s1' is already annotator 'ann-0'"):
        await ingest.register_annotator(core, SVC, Annotator("ann-9", "nurse", "", "s1"))
    moved = await ingest.register_annotator(core, admin, Annotator("ann-0", "nurse", "", "s2"))
    assert moved.subject == "s2"
    actions = await _audit(core)
    assert actions[-1] == ("ops", "register_annotator")
