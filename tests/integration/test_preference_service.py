"""PreferenceService through real gRPC on SQLite and PostgreSQL: writes with idempotency
and de-identification, bad input that writes nothing, the labelling queue, agreement,
snapshots and exports, and the audit chain."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select, text

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.preference import models
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc
from tests.conftest import client, reset_tables, serving

Token = Callable[[Role], str]
GUIDE = "2026-11"


def stand_in_redactor(text: str) -> str:
    """A stand-in for clinalign.common.deid in these tests, so their expectations do not
    depend on the de-identifier's model: it redacts one known synthetic name."""
    return text.replace("Jane Roe", "[NAME]")


class Harness:
    def __init__(self, stub: preference_pb2_grpc.PreferenceServiceStub, app: PreferenceApp):
        self.stub = stub
        self.app = app
        self.n = 0

    def key(self) -> str:
        self.n += 1
        return f"test-key-{self.n:06d}"

    async def setup(self, annotators: int = 2) -> None:
        for i in range(annotators):
            await self.stub.RegisterAnnotator(
                pb.RegisterAnnotatorRequest(
                    annotator=pb.Annotator(id=f"ann-{i}", role="physician", specialty="cardiology")
                )
            )
        await self.stub.PublishGuidelines(
            pb.PublishGuidelinesRequest(
                version=GUIDE, text="Prefer the safer, more complete answer."
            )
        )

    async def prompt_with(
        self, n_responses: int, text_: str = "I have chest pain."
    ) -> tuple[str, list[str]]:
        pid = (
            await self.stub.SubmitPrompts(
                pb.SubmitPromptsRequest(
                    idempotency_key=self.key(),
                    prompts=[
                        pb.PromptInput(
                            text=text_,
                            source=pb.PROMPT_SOURCE_CURATED,
                            tags=["specialty:cardiology"],
                        )
                    ],
                )
            )
        ).ids[0]
        rids = list(
            (
                await self.stub.SubmitResponses(
                    pb.SubmitResponsesRequest(
                        idempotency_key=self.key(),
                        responses=[
                            pb.ResponseInput(
                                prompt_id=pid,
                                text=f"Answer {i} to {text_}",
                                model_version="policy-v1",
                            )
                            for i in range(n_responses)
                        ],
                    )
                )
            ).ids
        )
        return pid, rids

    def ctx(self, annotator: str = "ann-0") -> pb.LabelContext:
        return pb.LabelContext(annotator_id=annotator, guideline_version=GUIDE)

    async def count(self, table: type[models.Base]) -> int:
        return await self.app.db.run_sync(
            lambda s: int(s.scalar(select(func.count()).select_from(table)) or 0)
        )


@pytest.fixture
async def h(common: CommonSettings, token: Token, database_url: str) -> AsyncIterator[Harness]:
    reset_tables(database_url, models.Base)
    app = PreferenceApp(
        common,
        PreferenceSettings(port=0, database_url=database_url, max_text_chars=2000, max_batch=50),
        redact=stand_in_redactor,
    )
    async with serving(app, common) as running:
        async with client(running, common, token(Role.ADMIN)) as ch:
            yield Harness(preference_pb2_grpc.PreferenceServiceStub(ch), app)


async def _error(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


async def test_free_text_is_deidentified_before_storage(h: Harness) -> None:
    await h.setup()
    pid, rids = await h.prompt_with(2, "Jane Roe has had chest pain since Monday.")
    got = await h.stub.GetPrompt(pb.GetPromptRequest(id=pid))
    assert got.prompt.text == "[NAME] has had chest pain since Monday."
    assert sorted(r.id for r in got.responses) == sorted(rids)
    stored = await h.app.db.run_sync(
        lambda s: [
            *s.scalars(select(models.PromptRow.text)),
            *s.scalars(select(models.ResponseRow.text)),
        ]
    )
    assert stored and not any("Jane Roe" in t for t in stored)


async def test_retried_batch_returns_first_ids_and_writes_once(h: Harness) -> None:
    await h.setup()
    _, (a, b) = await h.prompt_with(2)
    req = pb.SubmitComparisonsRequest(
        idempotency_key="batch-0001",
        comparisons=[
            pb.Comparison(
                context=h.ctx(),
                response_a_id=a,
                response_b_id=b,
                preference=pb.PREFERENCE_A,
                strength=0.8,
            )
        ],
    )
    first = await h.stub.SubmitComparisons(req)
    again = await h.stub.SubmitComparisons(req)
    assert (first.replayed, again.replayed) == (False, True)
    assert list(again.ids) == list(first.ids)
    assert await h.count(models.ComparisonRow) == 1
    other = await _error(
        h.stub.SubmitRatings(
            pb.SubmitRatingsRequest(
                idempotency_key="batch-0001",
                ratings=[
                    pb.Rating(context=h.ctx(), response_id=a, axis=pb.RATING_AXIS_SAFETY, score=4)
                ],
            )
        )
    )
    assert other.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (other.details() or "").startswith("idempotency_key: was already used for")


async def test_bad_input_names_the_field_and_writes_nothing(h: Harness) -> None:
    await h.setup()
    _, (a, b) = await h.prompt_with(2)
    _, (c, _d) = await h.prompt_with(2, "A different question.")
    audit_before = await h.count(models.AuditRow)
    cases = {
        "comparisons[1].response_b_id": pb.SubmitComparisonsRequest(
            idempotency_key=h.key(),
            comparisons=[
                pb.Comparison(
                    context=h.ctx(), response_a_id=a, response_b_id=b, preference=pb.PREFERENCE_A
                ),
                pb.Comparison(
                    context=h.ctx(),
                    response_a_id=a,
                    response_b_id="r_missing",
                    preference=pb.PREFERENCE_B,
                ),
            ],
        ),
        "comparisons[0].response_b_id: compares": pb.SubmitComparisonsRequest(
            idempotency_key=h.key(),
            comparisons=[
                pb.Comparison(
                    context=h.ctx(), response_a_id=a, response_b_id=a, preference=pb.PREFERENCE_A
                )
            ],
        ),
        "comparisons[0].response_b_id: answers": pb.SubmitComparisonsRequest(
            idempotency_key=h.key(),
            comparisons=[
                pb.Comparison(
                    context=h.ctx(), response_a_id=a, response_b_id=c, preference=pb.PREFERENCE_A
                )
            ],
        ),
        "comparisons[0].context.annotator_id": pb.SubmitComparisonsRequest(
            idempotency_key=h.key(),
            comparisons=[
                pb.Comparison(
                    context=h.ctx("ann-99"),
                    response_a_id=a,
                    response_b_id=b,
                    preference=pb.PREFERENCE_A,
                )
            ],
        ),
        "comparisons[0].preference": pb.SubmitComparisonsRequest(
            idempotency_key=h.key(),
            comparisons=[pb.Comparison(context=h.ctx(), response_a_id=a, response_b_id=b)],
        ),
        "idempotency_key": pb.SubmitComparisonsRequest(
            idempotency_key="short",
            comparisons=[
                pb.Comparison(
                    context=h.ctx(), response_a_id=a, response_b_id=b, preference=pb.PREFERENCE_A
                )
            ],
        ),
    }
    for expected, req in cases.items():
        err = await _error(h.stub.SubmitComparisons(req))
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        assert (err.details() or "").startswith(expected), (expected, err.details())
    rating = await _error(
        h.stub.SubmitRatings(
            pb.SubmitRatingsRequest(
                idempotency_key=h.key(),
                ratings=[
                    pb.Rating(context=h.ctx(), response_id=a, axis=pb.RATING_AXIS_SAFETY, score=6)
                ],
            )
        )
    )
    assert (rating.details() or "").startswith("ratings[0].score: must be between 1 and 5")
    for text_, field in (
        ("  ", "prompts[0].text: must not be empty"),
        ("x" * 2001, "prompts[0].text: is 2001 characters"),
    ):
        err = await _error(
            h.stub.SubmitPrompts(
                pb.SubmitPromptsRequest(
                    idempotency_key=h.key(),
                    prompts=[pb.PromptInput(text=text_, source=pb.PROMPT_SOURCE_CURATED)],
                )
            )
        )
        assert (err.details() or "").startswith(field)
    unknown = await _error(h.stub.GetPrompt(pb.GetPromptRequest(id="p_nope")))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert await h.count(models.ComparisonRow) == 0
    assert await h.count(models.RatingRow) == 0
    assert await h.count(models.AuditRow) == audit_before


async def test_correction_yields_an_implicit_pair(h: Harness) -> None:
    await h.setup()
    _, (a, _b) = await h.prompt_with(2)
    await h.stub.SubmitCorrections(
        pb.SubmitCorrectionsRequest(
            idempotency_key=h.key(),
            corrections=[
                pb.Correction(
                    context=h.ctx("ann-1"),
                    response_id=a,
                    corrected_text="Call emergency services now: Jane Roe may have angina.",
                    comment="Missed the red flag.",
                )
            ],
        )
    )
    pairs = await h.app.db.run_sync(
        lambda s: [
            (c.response_b_id, c.preference, c.annotator_id, c.correction_id is not None)
            for c in s.scalars(select(models.ComparisonRow))
        ]
    )
    assert pairs == [(a, "a", "ann-1", True)]
    fixed = await h.app.db.run_sync(
        lambda s: s.scalar(
            select(models.ResponseRow.text).where(models.ResponseRow.model_version == "human:ann-1")
        )
    )
    assert fixed is not None and "[NAME]" in fixed and "Jane Roe" not in fixed


async def test_queue_shows_each_task_to_k_distinct_annotators(h: Harness) -> None:
    await h.setup(annotators=3)
    specs = []
    for i in range(2):
        pid, rids = await h.prompt_with(2, f"Question {i}")
        specs.append(pb.TaskSpec(prompt_id=pid, response_ids=rids))
    created = await h.stub.CreateTasks(
        pb.CreateTasksRequest(
            idempotency_key=h.key(), batch_id="b1", tasks=specs, overlap=2, guideline_version=GUIDE
        )
    )
    t1, t2 = created.task_ids

    async def next_for(annotator: str) -> pb.Task:
        return (await h.stub.NextTask(pb.NextTaskRequest(annotator_id=annotator))).task

    first = await next_for("ann-0")
    assert first.id == t1 and first.guideline_text.startswith("Prefer the safer")
    assert (await next_for("ann-0")).id == t1  # unfinished work comes back first
    a, b = [r.id for r in first.responses]
    label = pb.Comparison(
        context=h.ctx("ann-0"), response_a_id=a, response_b_id=b, preference=pb.PREFERENCE_A
    )
    await h.stub.SubmitTask(
        pb.SubmitTaskRequest(
            idempotency_key=h.key(), task_id=t1, annotator_id="ann-0", comparison=label
        )
    )
    twice = await _error(
        h.stub.SubmitTask(
            pb.SubmitTaskRequest(
                idempotency_key=h.key(), task_id=t1, annotator_id="ann-0", comparison=label
            )
        )
    )
    assert (twice.details() or "").startswith(f"annotator_id: has already labelled task {t1}")
    assert (await next_for("ann-0")).id == t2
    assert (await next_for("ann-1")).id == t1
    # t1 has its two annotators and t2 has one in progress: ann-2 gets t2, then nothing.
    assert (await next_for("ann-2")).id == t2
    await h.stub.SkipTask(
        pb.SkipTaskRequest(task_id=t2, annotator_id="ann-2", reason="outside my specialty")
    )
    assert not (await h.stub.NextTask(pb.NextTaskRequest(annotator_id="ann-2"))).HasField("task")
    never = await _error(
        h.stub.SubmitTask(
            pb.SubmitTaskRequest(
                idempotency_key=h.key(), task_id=t2, annotator_id="ann-1", comparison=label
            )
        )
    )
    assert (never.details() or "").startswith(f"annotator_id: was not assigned task {t2}")


async def test_agreement_lists_low_consensus_tasks(h: Harness) -> None:
    await h.setup(annotators=2)
    specs = []
    for i in range(4):
        pid, rids = await h.prompt_with(2, f"Agreement question {i}")
        specs.append(pb.TaskSpec(prompt_id=pid, response_ids=rids))
    tasks = (
        await h.stub.CreateTasks(
            pb.CreateTasksRequest(
                idempotency_key=h.key(),
                batch_id="agree",
                tasks=specs,
                overlap=2,
                guideline_version=GUIDE,
            )
        )
    ).task_ids
    # Both prefer the first listed response on tasks 0-2; on task 3 they disagree.
    for ann in ("ann-0", "ann-1"):
        for i, tid in enumerate(tasks):
            task = (await h.stub.NextTask(pb.NextTaskRequest(annotator_id=ann))).task
            assert task.id == tid
            first, second = specs[i].response_ids
            choice = pb.PREFERENCE_A if (ann == "ann-0" or i < 3) else pb.PREFERENCE_B
            await h.stub.SubmitTask(
                pb.SubmitTaskRequest(
                    idempotency_key=h.key(),
                    task_id=tid,
                    annotator_id=ann,
                    comparison=pb.Comparison(
                        context=h.ctx(ann),
                        response_a_id=first,
                        response_b_id=second,
                        preference=choice,
                    ),
                )
            )
    got = await h.stub.GetAgreement(pb.GetAgreementRequest(batch_id="agree"))
    assert got.report.items == 4 and got.report.annotators == 2
    assert got.report.raw_agreement == pytest.approx(0.75)
    # Values: "first" 7 times, "second" once: Cohen's kappa = (0.75 - p_e) / (1 - p_e) with
    # p_e = (4/4 * 3/4) + (0 * 1/4) = 0.75 → 0, the classic prevalence paradox.
    assert got.report.HasField("cohen_kappa") and got.report.cohen_kappa == pytest.approx(0.0)
    assert [c.task_id for c in got.adjudication] == [tasks[3]]
    assert got.adjudication[0].consensus == pytest.approx(0.5)


async def _export(h: Harness, sid: str, fmt: int, kind: int, split: int) -> tuple[bytes, int]:
    data, records, digest = b"", 0, ""
    async for part in h.stub.ExportSnapshot(
        pb.ExportSnapshotRequest(id=sid, format=fmt, kind=kind, split=split)
    ):
        data += part.chunk
        records = records or part.records
        digest = part.file_sha256 or digest
    import hashlib

    assert digest == hashlib.sha256(data).hexdigest()
    return data, records


async def test_snapshots_are_deterministic_immutable_and_export_for_trl(h: Harness) -> None:
    await h.setup()
    for i in range(12):
        _, (a, b) = await h.prompt_with(2, f"Snapshot question {i}")
        await h.stub.SubmitComparisons(
            pb.SubmitComparisonsRequest(
                idempotency_key=h.key(),
                comparisons=[
                    pb.Comparison(
                        context=h.ctx(),
                        response_a_id=a,
                        response_b_id=b,
                        preference=pb.PREFERENCE_TIE if i == 0 else pb.PREFERENCE_B,
                    )
                ],
            )
        )
        if i == 1:
            await h.stub.SubmitCorrections(
                pb.SubmitCorrectionsRequest(
                    idempotency_key=h.key(),
                    corrections=[
                        pb.Correction(
                            context=h.ctx(), response_id=a, corrected_text="A safer answer."
                        )
                    ],
                )
            )
    flt = pb.SnapshotFilter(eval_fraction=0.25)
    one = (await h.stub.CreateSnapshot(pb.CreateSnapshotRequest(filter=flt))).snapshot
    two = (await h.stub.CreateSnapshot(pb.CreateSnapshotRequest(filter=flt))).snapshot
    assert (one.id, one.content_hash) == (two.id, two.content_hash)
    # 11 B-preferences + 1 implicit pair from the correction; the tie is dropped.
    assert one.train_pairs + one.eval_pairs == 12 and one.sft_records == 1
    assert one.eval_pairs > 0 and one.train_pairs > 0
    manifest = json.loads(one.manifest_json)
    assert manifest["content_hash"] == one.content_hash and manifest["audit_entry"]["sequence"]

    train, n = await _export(
        h, one.id, pb.EXPORT_FORMAT_JSONL, pb.EXPORT_KIND_PREFERENCE, pb.SPLIT_TRAIN
    )
    rows = [json.loads(line) for line in train.decode().splitlines()]
    assert n == len(rows) == one.train_pairs
    assert all({"prompt", "chosen", "rejected"} <= r.keys() for r in rows)
    assert all(r["chosen"].startswith("Answer 1") or r["chosen"] == "A safer answer." for r in rows)
    parquet, _ = await _export(
        h, one.id, pb.EXPORT_FORMAT_PARQUET, pb.EXPORT_KIND_PREFERENCE, pb.SPLIT_TRAIN
    )
    table = pq.read_table(io.BytesIO(parquet)).to_pylist()
    assert [r["chosen_id"] for r in table] == [r["chosen_id"] for r in rows]
    both, _ = await _export(
        h, one.id, pb.EXPORT_FORMAT_JSONL, pb.EXPORT_KIND_PREFERENCE, pb.SPLIT_UNSPECIFIED
    )
    splits = {json.loads(line)["split"] for line in both.decode().splitlines()}
    assert splits == {"train", "eval"}
    sft, _ = await _export(
        h, one.id, pb.EXPORT_FORMAT_JSONL, pb.EXPORT_KIND_SFT, pb.SPLIT_UNSPECIFIED
    )
    assert json.loads(sft.decode())["completion"] == "A safer answer."

    keep = (
        await h.stub.CreateSnapshot(
            pb.CreateSnapshotRequest(
                filter=pb.SnapshotFilter(eval_fraction=0.25, tie_handling=pb.TIE_HANDLING_KEEP)
            )
        )
    ).snapshot
    assert keep.content_hash != one.content_hash
    assert keep.train_pairs + keep.eval_pairs == 13
    # New data makes a new snapshot; the old one exports byte for byte as before.
    _, (a, b) = await h.prompt_with(2, "A late question")
    await h.stub.SubmitComparisons(
        pb.SubmitComparisonsRequest(
            idempotency_key=h.key(),
            comparisons=[
                pb.Comparison(
                    context=h.ctx(), response_a_id=a, response_b_id=b, preference=pb.PREFERENCE_A
                )
            ],
        )
    )
    later = (await h.stub.CreateSnapshot(pb.CreateSnapshotRequest(filter=flt))).snapshot
    assert later.content_hash != one.content_hash
    again, _ = await _export(
        h, one.id, pb.EXPORT_FORMAT_JSONL, pb.EXPORT_KIND_PREFERENCE, pb.SPLIT_TRAIN
    )
    assert again == train
    listed = await h.stub.ListSnapshots(pb.ListSnapshotsRequest())
    assert {s.id for s in listed.snapshots} == {one.id, keep.id, later.id}
    bad = await _error(
        h.stub.CreateSnapshot(pb.CreateSnapshotRequest(filter=pb.SnapshotFilter(min_agreement=1.5)))
    )
    assert (bad.details() or "").startswith("filter.min_agreement:")


async def test_a_two_to_one_vote_is_kept_whole_only_without_deduplication(h: Harness) -> None:
    """Three annotators judge one pair two to one. Without deduplication the snapshot holds
    all three labels, so the majority outweighs the dissent; deduplication keeps one of
    the agreeing labels and the dissent, a one-to-one draw (why the demo and the
    retraining loop leave it off)."""
    await h.setup(annotators=3)
    _, (a, b) = await h.prompt_with(2, "Is a two to one vote kept?")
    votes = {"ann-0": pb.PREFERENCE_A, "ann-1": pb.PREFERENCE_A, "ann-2": pb.PREFERENCE_B}
    await h.stub.SubmitComparisons(
        pb.SubmitComparisonsRequest(
            idempotency_key=h.key(),
            comparisons=[
                pb.Comparison(context=h.ctx(who), response_a_id=a, response_b_id=b, preference=v)
                for who, v in votes.items()
            ],
        )
    )

    async def chosen(deduplicate: bool) -> list[str]:
        flt = pb.SnapshotFilter(eval_fraction=0.5, deduplicate=deduplicate)
        snap = (await h.stub.CreateSnapshot(pb.CreateSnapshotRequest(filter=flt))).snapshot
        data, _ = await _export(
            h, snap.id, pb.EXPORT_FORMAT_JSONL, pb.EXPORT_KIND_PREFERENCE, pb.SPLIT_UNSPECIFIED
        )
        return sorted(json.loads(line)["chosen_id"] for line in data.decode().splitlines())

    assert await chosen(False) == sorted([a, a, b])
    assert await chosen(True) == sorted([a, b])


async def test_audit_chain_detects_edits_deletions_and_reordering(h: Harness) -> None:
    await h.setup()
    await h.prompt_with(2)
    ok = await h.stub.VerifyAudit(pb.VerifyAuditRequest())
    assert ok.ok and ok.entries >= 4
    events = await h.stub.ListAuditEvents(pb.ListAuditEventsRequest())
    assert [e.action for e in events.events][:2] == ["register_annotator", "register_annotator"]

    async def tamper(sql: str) -> pb.VerifyAuditResponse:
        await h.app.db.run_write(lambda s: s.execute(text(sql)))
        return await h.stub.VerifyAudit(pb.VerifyAuditRequest())

    edited = await tamper("UPDATE audit_log SET principal = 'someone-else' WHERE seq = 2")
    assert (edited.ok, edited.first_bad_sequence) == (False, 2)
    await tamper("UPDATE audit_log SET principal = 'local-admin' WHERE seq = 2")
    assert (await h.stub.VerifyAudit(pb.VerifyAuditRequest())).ok
    # Swap entries 2 and 3 (each keeps its own hashes): a reordering.
    swap = (
        "UPDATE audit_log SET seq = -1 WHERE seq = 2; "
        "UPDATE audit_log SET seq = 2 WHERE seq = 3; "
        "UPDATE audit_log SET seq = 3 WHERE seq = -1"
    )
    for statement in swap.split("; ")[:-1]:
        await h.app.db.run_write(lambda s, q=statement: s.execute(text(q)))
    swapped = await tamper(swap.split("; ")[-1])
    assert (swapped.ok, swapped.first_bad_sequence) == (False, 2)
    for statement in swap.split("; ")[:-1]:
        await h.app.db.run_write(lambda s, q=statement: s.execute(text(q)))
    assert (await tamper(swap.split("; ")[-1])).ok
    deleted = await tamper("DELETE FROM audit_log WHERE seq = 3")
    assert (deleted.ok, deleted.first_bad_sequence) == (False, 3)
    assert "missing" in deleted.message


async def test_snapshot_anchors_reveal_a_truncated_audit_log(h: Harness) -> None:
    await h.setup()
    _, (a, b) = await h.prompt_with(2)
    await h.stub.SubmitComparisons(
        pb.SubmitComparisonsRequest(
            idempotency_key=h.key(),
            comparisons=[
                pb.Comparison(
                    context=h.ctx(), response_a_id=a, response_b_id=b, preference=pb.PREFERENCE_A
                )
            ],
        )
    )
    snap = (await h.stub.CreateSnapshot(pb.CreateSnapshotRequest())).snapshot
    anchored = json.loads(snap.manifest_json)["audit_entry"]["sequence"]
    await h.app.db.run_write(
        lambda s: s.execute(text(f"DELETE FROM audit_log WHERE seq >= {anchored}"))
    )
    result = await h.stub.VerifyAudit(pb.VerifyAuditRequest())
    assert (result.ok, result.first_bad_sequence) == (False, anchored)
    assert "truncated" in result.message


async def test_audit_verify_cli(h: Harness, common: CommonSettings) -> None:
    from typer.testing import CliRunner

    from clinalign.cli import app

    await h.setup()
    runner = CliRunner()
    args = ["audit", "verify", "--database-url", h.app.db.url, "--data-dir", str(common.data_dir)]
    ok = runner.invoke(app, args)
    assert ok.exit_code == 0 and "audit log intact: 3 entries" in ok.output
    # Without the service's keys its HMACs cannot be checked, and the CLI says so.
    keyless = runner.invoke(app, ["audit", "verify", "--database-url", h.app.db.url])
    assert keyless.exit_code == 1 and "no audit keys file was given" in keyless.output
    await h.app.db.run_write(
        lambda s: s.execute(text("UPDATE audit_log SET action = 'nothing' WHERE seq = 1"))
    )
    bad = runner.invoke(app, args)
    assert bad.exit_code == 1 and "BROKEN at entry 1" in bad.output
