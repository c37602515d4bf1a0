"""The monitor's closed loop through real services on loopback: confirmed flags become
preference data (a correction attributed to the flagging clinician; a labelling task with
fresh candidates from a real generation service), dismissed flags nothing, a redelivery
after a crash nothing twice; the retraining policy cuts real snapshots, trains a reward
model and a policy on a real trainer with tiny models, promotes through the real gates and
activates on the real reward and generation services, refuses what the gate refuses; and
lineage walks from a production output of the promoted version back to the flags."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from sqlalchemy import func, select

from clinalign.common.auth import Role, token_for_role
from clinalign.common.config import CommonSettings
from clinalign.common.judging import Assessment
from clinalign.common.v1 import common_pb2
from clinalign.generation.config import GenerationSettings
from clinalign.generation.server import GenerationApp
from clinalign.generation.v1 import generation_pb2 as gpb
from clinalign.generation.v1 import generation_pb2_grpc
from clinalign.monitor import feedback, store
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp
from clinalign.monitor.v1 import monitor_pb2 as pb
from clinalign.monitor.v1 import monitor_pb2_grpc
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.models import (
    ComparisonRow,
    CorrectionRow,
    ErrorAnnotationRow,
    PromptRow,
    ResponseRow,
)
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.preference.v1 import preference_pb2_grpc
from clinalign.reward.config import RewardSettings
from clinalign.reward.server import RewardApp
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2 as tpb
from clinalign.trainer.v1 import trainer_pb2_grpc
from tests.conftest import client, reset_tables, rpc_fails, serve_in_registry, serving
from tests.e2e.test_reward_pipeline import _populate

Token = Callable[[Role], str]
# A clinician whose principal name is not a valid annotator id: the monitor maps it.
ODD_CLINICIAN = ("Dr Jane Roe <jane.roe@example.org>", "odd-clinician-token-0123456789")
QUESTION = "I have had a fever and a cough for three days. What should I do?"
ORIGINAL = "There is nothing to worry about."
CORRECTED = "Rest and drink fluids; if it gets worse, seek urgent care."
# Trains in seconds on the tiny models (as test_trainer_jobs and test_ppo_job).
RM_HYPER = {
    "epochs": "2",
    "learning_rate": "1e-3",
    "batch_size": "8",
    "norm_prompts": "4",
    "norm_max_new_tokens": "8",
}
# A real PPO job of one iteration with a step too small to move the policy: the gate's
# seeded answers are the served policy's, every comparison a tie (win rate 0.5) and every
# safety criterion unchanged, which a gate wanting a win rate above 0 passes every time.
PPO_HYPER = {
    "iterations": "1",
    "rollout_batch_size": "4",
    "minibatches": "1",
    "ppo_epochs": "1",
    "response_length": "8",
    "learning_rate": "1e-12",
}


def _add_token(common: CommonSettings, principal: str, role: Role, token: str) -> None:
    path = common.resolved_tokens_file
    data = json.loads(path.read_text())
    data["tokens"].append({"principal": principal, "role": role.value, "token": token})
    path.write_text(json.dumps(data))


def _monitor(common: CommonSettings, url: str | None = None, **kw: Any) -> MonitorApp:
    if url is not None:
        reset_tables(url, store.Base)
    settings: dict[str, Any] = {"port": 0, "database_url": url, "feedback_interval_s": 3600.0}
    settings.update(kw)
    return MonitorApp(common, MonitorSettings(**settings))


async def _until(check: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    for _ in range(int(timeout_s / 0.1)):
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _output(oid: str, version: str = "policy-v1", text: str = ORIGINAL) -> pb.ProductionOutput:
    return pb.ProductionOutput(
        output_id=oid,
        model_version=version,
        prompt=QUESTION,
        text=text,
        latency_s=0.2,
        completion_tokens=5,
    )


async def _flag(
    stub: monitor_pb2_grpc.MonitorServiceStub, oid: str, corrected: str = "", confirm: bool = True
) -> pb.Flag:
    flag = (
        await stub.FlagOutput(
            pb.FlagOutputRequest(
                output_id=oid,
                category=common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE,
                severity=pb.SEVERITY_HIGH,
                comment="falsely reassuring",
                corrected_text=corrected,
            )
        )
    ).flag
    resolution = pb.RESOLUTION_CONFIRM if confirm else pb.RESOLUTION_DISMISS
    reason = "" if confirm else "the answer is fine"
    return (
        await stub.ResolveFlag(
            pb.ResolveFlagRequest(flag_id=flag.id, resolution=resolution, reason=reason)
        )
    ).flag


async def _export(
    stub: preference_pb2_grpc.PreferenceServiceStub,
    kind: ppb.ExportKind.ValueType = ppb.EXPORT_KIND_PREFERENCE,
) -> list[dict[str, Any]]:
    snap = (await stub.CreateSnapshot(ppb.CreateSnapshotRequest())).snapshot
    chunks = [
        c.chunk
        async for c in stub.ExportSnapshot(
            ppb.ExportSnapshotRequest(id=snap.id, format=ppb.EXPORT_FORMAT_JSONL, kind=kind)
        )
    ]
    return [json.loads(line) for line in b"".join(chunks).decode().splitlines() if line]


async def _feedback_row(app: MonitorApp, flag_id: str) -> store.FeedbackRow | None:
    return await app.db.run_sync(lambda s: feedback.get(s, flag_id))


# ------------------------------------------------------------------------------ feedback


async def test_a_confirmed_correction_becomes_a_comparison_by_the_flagging_clinician(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    _add_token(common, ODD_CLINICIAN[0], Role.CLINICIAN, ODD_CLINICIAN[1])
    preference = PreferenceApp(common, PreferenceSettings(port=0))
    async with serving(preference, common) as pref:
        common.preference_target = f"127.0.0.1:{pref.port}"
        # The background round, every 0.2 s, delivers what is confirmed.
        monitor = _monitor(common, database_url, feedback_interval_s=0.2)
        async with serving(monitor, common) as mon:
            async with client(mon, common, token(Role.SERVICE)) as ch:
                await monitor_pb2_grpc.MonitorServiceStub(ch).RecordOutputs(
                    pb.RecordOutputsRequest(outputs=[_output("out-1"), _output("out-2")])
                )
            async with client(mon, common, ODD_CLINICIAN[1]) as ch:
                stub = monitor_pb2_grpc.MonitorServiceStub(ch)
                dismissed = await _flag(stub, "out-2", corrected="something else", confirm=False)
                confirmed = await _flag(stub, "out-1", corrected=CORRECTED)
            row = await _until(
                lambda: _feedback_row(monitor, confirmed.id), "delivery", timeout_s=30
            )
            delivered = await _until(
                lambda: _delivered(monitor, confirmed.id), "delivered state", timeout_s=30
            )
            none_for_dismissed = await _feedback_row(monitor, dismissed.id)
            async with client(mon, common, token(Role.ML_ENGINEER)) as ch:
                listed = {
                    f.id: f
                    for f in (
                        await monitor_pb2_grpc.MonitorServiceStub(ch).ListFlags(
                            pb.ListFlagsRequest()
                        )
                    ).flags
                }
        async with client(pref, common, token(Role.ML_ENGINEER)) as ch:
            records = await _export(preference_pb2_grpc.PreferenceServiceStub(ch))
            harm = await _export(
                preference_pb2_grpc.PreferenceServiceStub(ch), ppb.EXPORT_KIND_HARM
            )
        prompts = await preference.db.run_sync(
            lambda s: [(p.source, sorted(p.tags)) for p in s.scalars(select(PromptRow))]
        )

    assert row is not None and none_for_dismissed is None
    annotator = feedback.annotator_id(ODD_CLINICIAN[0])
    assert annotator.startswith("clin-") and delivered.annotator_id == annotator
    assert delivered.prompt_id and delivered.response_id and delivered.correction_id
    assert delivered.reason == ""
    [record] = records
    assert record["chosen"] == CORRECTED and record["rejected"] == ORIGINAL
    assert record["annotator_id"] == annotator  # attributed to the flagging clinician
    assert record["source"] == "flagged"
    assert f"flag:{confirmed.id}" in record["tags"] and "model_version:policy-v1" in record["tags"]
    assert record["prompt_id"] == delivered.prompt_id
    assert prompts == [("flagged", sorted([f"flag:{confirmed.id}", "model_version:policy-v1"]))]
    # the flag's category and severity label the flagged output for the cost model
    [flagged] = harm  # the clinician's rewrite is a person's answer, not a model's
    assert flagged["response_id"] == delivered.response_id and flagged["response"] == ORIGINAL
    assert flagged["categories"] == ["unsafe_advice"] and flagged["severity"] == "high"
    assert flagged["annotators"] == [annotator]
    # The flag shows its feedback: pending when confirmed, then what it became.
    assert confirmed.feedback_state == pb.FEEDBACK_STATE_PENDING
    assert dismissed.feedback_state == pb.FEEDBACK_STATE_UNSPECIFIED
    shown = listed[confirmed.id]
    assert shown.feedback_state == pb.FEEDBACK_STATE_DELIVERED and shown.feedback_reason == ""
    assert list(shown.feedback_refs) == [
        f"prompt:{delivered.prompt_id}",
        f"response:{delivered.response_id}",
        f"correction:{delivered.correction_id}",
    ]
    assert listed[dismissed.id].feedback_state == pb.FEEDBACK_STATE_UNSPECIFIED


async def _delivered(app: MonitorApp, flag_id: str) -> store.FeedbackRow | None:
    row = await _feedback_row(app, flag_id)
    return row if row is not None and row.state == feedback.DELIVERED else None


async def test_a_redelivery_after_a_crash_writes_nothing_twice(
    common: CommonSettings, token: Token, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    preference = PreferenceApp(common, PreferenceSettings(port=0))
    async with serving(preference, common) as pref:
        common.preference_target = f"127.0.0.1:{pref.port}"
        monitor = _monitor(common, database_url)
        async with serving(monitor, common) as mon:
            async with client(mon, common, token(Role.SERVICE)) as ch:
                await monitor_pb2_grpc.MonitorServiceStub(ch).RecordOutputs(
                    pb.RecordOutputsRequest(outputs=[_output("out-1")])
                )
            async with client(mon, common, token(Role.CLINICIAN)) as ch:
                flag = await _flag(monitor_pb2_grpc.MonitorServiceStub(ch), "out-1", CORRECTED)

            # The preference store acknowledges every call, then the monitor dies before it
            # records the delivery, having lost even the ids it had saved on the way.
            real = feedback.mark_delivered

            def crash(*_: Any) -> None:
                raise RuntimeError("killed")

            monkeypatch.setattr(feedback, "mark_delivered", crash)
            with pytest.raises(RuntimeError, match="killed"):
                await monitor.feedback.deliver_due()
            first = await _feedback_row(monitor, flag.id)

            def forget(s: Any) -> None:
                row = s.get(store.FeedbackRow, flag.id)
                row.prompt_id = row.response_id = ""

            await monitor.db.run_write(forget)
            monkeypatch.setattr(feedback, "mark_delivered", real)
            assert await monitor.feedback.deliver_due() == (1, 0)
            assert await monitor.feedback.deliver_due() == (0, 0)  # nothing left to do
            after = await _feedback_row(monitor, flag.id)

        def count(s: Any) -> tuple[int, ...]:
            return tuple(
                int(s.scalar(select(func.count()).select_from(t)) or 0)
                for t in (PromptRow, ResponseRow, CorrectionRow, ComparisonRow, ErrorAnnotationRow)
            )

        counts = await preference.db.run_sync(count)

    assert first is not None and first.state == feedback.PENDING and first.prompt_id
    assert after is not None and after.state == feedback.DELIVERED
    assert after.prompt_id == first.prompt_id and after.response_id == first.response_id
    # one prompt; the original and the correction's rewrite; one correction; one pair; the
    # flag's error annotation
    assert counts == (1, 2, 1, 1, 1)


async def test_a_confirmed_flag_without_correction_becomes_a_labelling_task(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    preference = PreferenceApp(common, PreferenceSettings(port=0))
    generation = GenerationApp(
        common,
        GenerationSettings(
            port=0,
            model_path=tiny_model_dir,
            model_version="policy-v1",
            device="cpu",
            report_to_monitor=False,
        ),
    )
    async with serving(preference, common) as pref, serving(generation, common) as gen:
        common.preference_target = f"127.0.0.1:{pref.port}"
        common.generation_target = f"127.0.0.1:{gen.port}"
        monitor = _monitor(common, feedback_max_new_tokens=8, feedback_guideline_version="flags-v1")
        async with serving(monitor, common) as mon:
            async with client(mon, common, token(Role.SERVICE)) as ch:
                await monitor_pb2_grpc.MonitorServiceStub(ch).RecordOutputs(
                    pb.RecordOutputsRequest(outputs=[_output("out-1")])
                )
            async with client(mon, common, token(Role.CLINICIAN)) as ch:
                flag = await _flag(monitor_pb2_grpc.MonitorServiceStub(ch), "out-1")
            unpublished = await monitor.feedback.deliver_due()
            failed = await _feedback_row(monitor, flag.id)
            async with client(mon, common, token(Role.CLINICIAN)) as ch:
                [shown] = (
                    await monitor_pb2_grpc.MonitorServiceStub(ch).ListFlags(pb.ListFlagsRequest())
                ).flags
            async with client(pref, common, token(Role.ML_ENGINEER)) as ch:
                pstub = preference_pb2_grpc.PreferenceServiceStub(ch)
                await pstub.PublishGuidelines(
                    ppb.PublishGuidelinesRequest(version="flags-v1", text="Pick the safest.")
                )
            published = await monitor.feedback.deliver_due()
            done = await _feedback_row(monitor, flag.id)
        async with client(pref, common, token(Role.CLINICIAN)) as ch:
            pstub = preference_pb2_grpc.PreferenceServiceStub(ch)
            task = (await pstub.NextTask(ppb.NextTaskRequest(batch_id="flagged-outputs"))).task
            prompt = await pstub.GetPrompt(ppb.GetPromptRequest(id=task.prompt.id))

    assert unpublished == (0, 1)
    assert failed is not None and failed.state == feedback.FAILED
    assert "task:" in failed.reason and "'flags-v1' is not published" in failed.reason
    # two drafts asked for; one the tiny model ends at once would be left out
    assert shown.feedback_state == pb.FEEDBACK_STATE_FAILED
    assert shown.feedback_reason == failed.reason
    assert failed.attempts == 1 and len(failed.candidate_ids.split(",")) in (1, 2)
    assert published == (1, 0)
    assert done is not None and done.state == feedback.DELIVERED and done.task_ids
    assert done.candidate_ids == failed.candidate_ids  # the retry did not generate again
    assert task.id in done.task_ids.split(",") and task.guideline_version == "flags-v1"
    assert task.prompt.source == ppb.PROMPT_SOURCE_FLAGGED
    by_id = {r.id: r for r in task.responses}
    assert set(by_id) == {done.response_id, *done.candidate_ids.split(",")}
    assert by_id[done.response_id].text == ORIGINAL
    assert all(by_id[c].model_version == "policy-v1" for c in done.candidate_ids.split(","))
    # nothing stored twice across the two rounds
    assert len(prompt.responses) == 1 + len(done.candidate_ids.split(","))


async def test_lineage_and_retraining_validate_their_input_and_roles(
    common: CommonSettings, token: Token
) -> None:
    monitor = _monitor(common, retrain_poll_s=0.01)
    async with serving(monitor, common) as mon:
        async with client(mon, common, token(Role.CLINICIAN)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            empty = await rpc_fails(stub.GetLineage(pb.GetLineageRequest()))
            unknown = await rpc_fails(stub.GetLineage(pb.GetLineageRequest(output_id="nope")))
            denied = await rpc_fails(stub.EvaluateRetraining(pb.EvaluateRetrainingRequest()))
            denied_list = await rpc_fails(stub.ListRetrainingRuns(pb.ListRetrainingRunsRequest()))
        async with client(mon, common, token(Role.EHR_CLIENT)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            ehr = await rpc_fails(stub.GetLineage(pb.GetLineageRequest(output_id="x")))
        async with client(mon, common, token(Role.ML_ENGINEER)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            bad_page = await rpc_fails(
                stub.ListRetrainingRuns(pb.ListRetrainingRunsRequest(page_size=101))
            )
            bad_token = await rpc_fails(
                stub.ListRetrainingRuns(pb.ListRetrainingRunsRequest(page_token="zz"))
            )
            no_runs = await stub.ListRetrainingRuns(pb.ListRetrainingRunsRequest())
            # nothing listens at the peers' default targets: a precondition, not INTERNAL
            no_peers = await rpc_fails(stub.EvaluateRetraining(pb.EvaluateRetrainingRequest()))
        env = {"CLINALIGN_MONITOR_TARGET": f"127.0.0.1:{mon.port}"}
        cli_missing = await _cli(common, env, "lineage", "nope")
        cli_list = await _cli(common, env, "retraining", "list", "--json")
        cli_dry = await _cli(common, env, "retraining", "evaluate", "--dry-run")
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (empty.details() or "").startswith("output_id:")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "output_id" in (unknown.details() or "")
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert denied_list.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ehr.code() == grpc.StatusCode.PERMISSION_DENIED
    assert bad_page.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad_page.details() or "").startswith("page_size:")
    assert (bad_token.details() or "").startswith("page_token:")
    assert list(no_runs.runs) == [] and no_runs.next_page_token == ""
    assert no_peers.code() == grpc.StatusCode.UNAVAILABLE
    assert "peer service is unavailable" in (no_peers.details() or "")
    assert cli_missing.exit_code == 1
    assert "error: NOT_FOUND: output_id: output 'nope' not found" in cli_missing.output
    assert cli_list.exit_code == 0 and json.loads(cli_list.output) == {}
    assert cli_dry.exit_code == 1 and "error: UNAVAILABLE:" in cli_dry.output


async def _cli(common: CommonSettings, env: dict[str, str], *args: str) -> Any:
    """The `clinalign` command in a thread (it runs its own event loop)."""
    from typer.testing import CliRunner

    from clinalign.cli import app

    argv = [*args, "--data-dir", str(common.data_dir)]
    return await asyncio.to_thread(CliRunner().invoke, app, argv, env=env)


# ----------------------------------------------------------- retraining and lineage


async def _run_ended(stub: monitor_pb2_grpc.MonitorServiceStub, run_id: str) -> pb.RetrainingRun:
    async def ended() -> pb.RetrainingRun | None:
        runs = (await stub.ListRetrainingRuns(pb.ListRetrainingRunsRequest())).runs
        run = next(r for r in runs if r.id == run_id)
        return run if run.state != pb.RUN_STATE_RUNNING else None

    return await _until(ended, f"run {run_id} to end", timeout_s=400)


def _trainer(common: CommonSettings, **gate: Any) -> TrainerApp:
    settings = TrainerSettings(
        port=0,
        watch_poll_s=0.1,
        worker_threads=1,
        gate_prompts=8,
        gate_safety_prompts=8,
        gate_max_new_tokens=8,
        gate_judges=["clinalign.simulation.judge:panel_judge"],
        **gate,
    )
    return TrainerApp(common, settings)


class RepeatsEveryFault:
    """A stand-in judge for the tiny model, whose answers are not clinical text: it finds
    an unsafe-advice fault in every answer, as a clinician would in a policy that repeats
    the confirmed one. It ranks nothing."""

    name = "repeats-every-fault"

    async def assess(self, prompts: Sequence[str], answers: Sequence[str]) -> list[Assessment]:
        return [Assessment(faults=frozenset({"ERROR_CATEGORY_UNSAFE_ADVICE"})) for _ in answers]

    async def compare(
        self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> None:
        return None


async def _quiet(trainer: TrainerApp) -> None:
    for _ in range(400):  # let the job workers exit before the trainer stops
        if not trainer.executor.followed:
            return
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_flags_retrain_promote_refuse_and_trace_back(
    common: CommonSettings, token: Token, tiny_model_dir: Path, tiny_reward_dir: Path
) -> None:
    # One settings object every service reads its peers' targets from, filled in as they
    # start (the reward and trainer services call each other).
    wired = common
    preference = PreferenceApp(wired, PreferenceSettings(port=0))
    reward = RewardApp(
        wired,
        RewardSettings(port=0, model_path=tiny_reward_dir, model_version="reward-v1", device="cpu"),
    )
    generation = GenerationApp(
        wired,
        GenerationSettings(
            port=0, model_path=tiny_model_dir, model_version="policy-v1", device="cpu"
        ),
    )
    monitor = _monitor(
        wired,
        retrain_min_new_pairs=1,
        retrain_eval_fraction=0.3,
        retrain_poll_s=0.2,
        retrain_reward_hyperparameters=RM_HYPER,
        retrain_ppo_hyperparameters=PPO_HYPER,
    )
    admin, clinician, engineer = (
        token_for_role(wired.resolved_tokens_file, r)
        for r in (Role.ADMIN, Role.CLINICIAN, Role.ML_ENGINEER)
    )
    async with (
        serving(preference, wired) as pref,
        serving(reward, wired) as rew,
        serving(monitor, wired) as mon,
    ):
        wired.preference_target = f"127.0.0.1:{pref.port}"
        wired.reward_target = f"127.0.0.1:{rew.port}"
        wired.monitor_target = f"127.0.0.1:{mon.port}"
        async with client(pref, wired, admin) as ch:
            await _populate(preference_pb2_grpc.PreferenceServiceStub(ch), 24)

        trainer = _trainer(wired, gate_min_win_rate=0.0)
        async with serving(trainer, wired) as tr:
            wired.trainer_target = f"127.0.0.1:{tr.port}"
            async with client(tr, wired, admin) as ch:
                registry = trainer_pb2_grpc.TrainerServiceStub(ch)
                reward = await registry.RegisterModel(
                    tpb.RegisterModelRequest(
                        path=str(tiny_reward_dir), kind=common_pb2.MODEL_KIND_REWARD
                    )
                )
                serve_in_registry(wired, reward.version.ref.version)  # as if gated
                await registry.RegisterModel(
                    tpb.RegisterModelRequest(
                        path=str(tiny_model_dir),
                        kind=common_pb2.MODEL_KIND_POLICY,
                        serve_if_none=True,
                    )
                )
            async with serving(generation, wired) as gen:
                wired.generation_target = f"127.0.0.1:{gen.port}"
                async with client(gen, wired, token(Role.EHR_CLIENT)) as ch:
                    ehr = generation_pb2_grpc.GenerationServiceStub(ch)
                    ask = gpb.GenerateRequest(
                        input=gpb.GenerationInput(prompt=QUESTION),
                        # sampled and seeded: a non-empty draft the store can keep
                        sampling=gpb.SamplingParams(max_new_tokens=16, temperature=1.0, seed=7),
                    )
                    before = (await ehr.Generate(ask)).completion.provenance
                async with client(mon, wired, clinician) as ch:
                    mstub = monitor_pb2_grpc.MonitorServiceStub(ch)
                    await _until(
                        lambda: monitor.db.run_sync(
                            lambda s: store.get_output(s, before.output_id)
                        ),
                        "the generated output to reach the monitor",
                    )
                    flag = await _flag(mstub, before.output_id, CORRECTED)
                delivered = await monitor.feedback.deliver_due()
                row = await _feedback_row(monitor, flag.id)
                assert delivered == (1, 0), row and row.reason

                async with client(mon, wired, engineer) as ch:
                    stub = monitor_pb2_grpc.MonitorServiceStub(ch)
                    dry = await stub.EvaluateRetraining(pb.EvaluateRetrainingRequest(dry_run=True))
                    after_dry = await stub.ListRetrainingRuns(pb.ListRetrainingRunsRequest())
                    first, second = await asyncio.gather(
                        stub.EvaluateRetraining(pb.EvaluateRetrainingRequest()),
                        stub.EvaluateRetraining(pb.EvaluateRetrainingRequest()),
                    )
                    promoted = await _run_ended(stub, first.run.id)
                    listed = await stub.ListRetrainingRuns(pb.ListRetrainingRunsRequest())

                async with client(gen, wired, token(Role.EHR_CLIENT)) as ch:
                    ehr = generation_pb2_grpc.GenerationServiceStub(ch)
                    served_after = [
                        m.model.ref.version
                        for m in (await ehr.ListModels(gpb.ListModelsRequest())).models
                    ]
                    fresh = (await ehr.Generate(ask)).completion.provenance
                await _until(
                    lambda: monitor.db.run_sync(lambda s: store.get_output(s, fresh.output_id)),
                    "the new version's output to reach the monitor",
                )
                async with client(mon, wired, clinician) as ch:
                    mstub = monitor_pb2_grpc.MonitorServiceStub(ch)
                    lineage = await mstub.GetLineage(
                        pb.GetLineageRequest(output_id=fresh.output_id)
                    )
                    env = {"CLINALIGN_MONITOR_TARGET": wired.monitor_target}
                    tree = await _cli(wired, env, "lineage", fresh.output_id)
                    # A second flag, on the new version's output: new data for a second run.
                    await _flag(mstub, fresh.output_id, "Seek urgent care if it worsens.")
                assert await monitor.feedback.deliver_due() == (1, 0)

                # The same trainer as if restarted replaying confirmed flags of high severity
                # (the two above), with a judge that finds their fault in every answer: the
                # candidate repeats a confirmed fault.
                trainer.trainer.settings = trainer.trainer.settings.model_copy(
                    update={"gate_replay_min_severity": "SEVERITY_HIGH"}
                )
                trainer.trainer.judges += (RepeatsEveryFault(),)
                async with client(mon, wired, engineer) as ch:
                    stub = monitor_pb2_grpc.MonitorServiceStub(ch)
                    third = await stub.EvaluateRetraining(pb.EvaluateRetrainingRequest())
                    refused = await _run_ended(stub, third.run.id)
                    newest = await stub.ListRetrainingRuns(
                        pb.ListRetrainingRunsRequest(page_size=1)
                    )
                async with client(gen, wired, token(Role.EHR_CLIENT)) as ch:
                    ehr = generation_pb2_grpc.GenerationServiceStub(ch)
                    served_last = [
                        m.model.ref.version
                        for m in (await ehr.ListModels(gpb.ListModelsRequest())).models
                    ]
                    last = (await ehr.Generate(ask)).completion.provenance
                    cli_runs = await _cli(wired, env, "retraining", "list", "--json")
                await _quiet(trainer)

    # Dry run: the reasons, no run.
    assert dry.triggered and not dry.HasField("run")
    assert dry.reasons == ["new_preferences:49"]  # _populate's 48 pairs and the correction
    assert list(after_dry.runs) == []
    # Two concurrent evaluations: one run (the later may find the data already in it).
    assert first.run.id and first.run.id == second.run.id and len(listed.runs) == 1
    assert first.run.trigger == dry.reasons[0]

    # The lenient gate promotes: every step, in order, and the new policy serves.
    assert promoted.state == pb.RUN_STATE_PROMOTED, [(s.name, s.outcome) for s in promoted.steps]
    assert [s.name for s in promoted.steps] == [
        "snapshot",
        "reward_model_job",
        "promote_reward_model",
        "activate_reward_model",
        "ppo_job",
        "promote_policy",
        "activate_policy",
    ]
    assert promoted.promoted_version == "policy-v2" and served_after == ["policy-v2"]
    assert before.model_version == "policy-v1" and fresh.model_version == "policy-v2"

    # Lineage: output → policy-v2 → its PPO job → the run's snapshot (its prompts) → the
    # confirmed flag fed into it; the PPO job → reward-v2 → its job (on the same snapshot,
    # listed once); and back to the foundation model.
    steps = {(s.kind, s.id): s for s in lineage.steps}
    assert lineage.model.ref.version == "policy-v2"
    assert lineage.steps[0].kind == "output" and lineage.steps[0].parent_id == ""
    assert "written by policy-v2" in lineage.steps[0].summary
    ppo_job, rm_job = promoted.steps[4].ref, promoted.steps[1].ref
    snapshot_id = promoted.steps[0].ref
    assert steps[("model_version", "policy-v2")].parent_id == fresh.output_id
    assert steps[("job", ppo_job)].parent_id == "policy-v2"
    assert steps[("model_version", "policy-v1")].parent_id == ppo_job
    assert "foundation model" in steps[("model_version", "policy-v1")].summary
    assert steps[("model_version", "reward-v2")].parent_id == ppo_job
    assert steps[("job", rm_job)].parent_id == "reward-v2"
    assert steps[("snapshot", snapshot_id)].parent_id == ppo_job
    assert f"on {snapshot_id}" in steps[("job", ppo_job)].summary
    assert f"on {snapshot_id}" in steps[("job", rm_job)].summary
    assert steps[("flag", flag.id)].parent_id == snapshot_id
    assert "confirmed unsafe_advice (high)" in steps[("flag", flag.id)].summary
    for s in lineage.steps:  # summaries carry no patient text
        assert QUESTION not in s.summary and CORRECTED not in s.summary
    assert all(s.parent_id in {x.id for x in lineage.steps} for s in lineage.steps[1:])

    assert tree.exit_code == 0, tree.output
    # a tree: the output at the root, the flag indented under the snapshot
    lines = tree.output.splitlines()
    assert lines[0].startswith(f"output {fresh.output_id}")
    at = {k: next(i for i, x in enumerate(lines) if k in x) for k in (snapshot_id, flag.id)}
    indent = {k: len(lines[i]) - len(lines[i].lstrip(" │├└─")) for k, i in at.items()}
    assert at[flag.id] > at[snapshot_id] and indent[flag.id] > indent[snapshot_id]

    # The strict gate refuses the second run's policy: nothing new is served.
    assert third.reasons == ["new_preferences:1"] and third.run.id != first.run.id
    assert refused.state == pb.RUN_STATE_REFUSED, [(s.name, s.outcome) for s in refused.steps]
    assert refused.steps[-1].name == "promote_policy"
    assert "critical_flag_replay" in refused.steps[-1].outcome
    assert refused.reason.endswith(f"the policy gate refused {refused.steps[-1].ref}")
    assert refused.promoted_version == ""
    assert served_last == ["policy-v2"] and last.model_version == "policy-v2"
    assert [r.id for r in newest.runs] == [third.run.id] and newest.next_page_token
    assert cli_runs.exit_code == 0, cli_runs.output
    cli_states = [r["state"] for r in json.loads(cli_runs.output)["runs"]]
    assert cli_states == ["RUN_STATE_REFUSED", "RUN_STATE_PROMOTED"]  # newest first
    assert json.loads(cli_runs.output)["runs"][0]["reason"] == refused.reason
