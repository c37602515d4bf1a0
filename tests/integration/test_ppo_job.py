"""PPO jobs through the real services: a trainer service whose worker processes score
rollouts through a real reward service over gRPC. The job learns (the reward it optimises
is the reward model's score once a response ends, and the fixed penalty when it never
does), registers a policy version with its lineage and report; a job is killed, resumed,
cancelled and resumed again; a job refuses to mix reward models; bad specs name their
field."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from statistics import fmean

import grpc
import grpc.aio
import pytest

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.reward.config import RewardSettings
from clinalign.reward.server import RewardApp
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.jobs.executor import is_worker
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2 as tpb
from clinalign.trainer.v1 import trainer_pb2_grpc
from tests.conftest import client, rpc_fails, serve_in_registry, serving

Token = Callable[[Role], str]
# Settings under which the tiny model learns in a few seconds (see test_ppo_training).
FAST = {
    "rollout_batch_size": "8",
    "minibatches": "2",
    "ppo_epochs": "2",
    "response_length": "24",
    "learning_rate": "1e-3",
}


def _spec(**fields: object) -> tpb.JobSpec:
    hyper = {**FAST, **fields.pop("hyper", {})}  # type: ignore[dict-item]
    return tpb.JobSpec(kind=tpb.JOB_KIND_PPO, hyperparameters=hyper, seed=5, **fields)  # type: ignore[arg-type]


async def _until(
    stub: trainer_pb2_grpc.TrainerServiceStub, job_id: str, ok: Callable[[tpb.Job], bool]
) -> tpb.Job:
    for _ in range(2400):
        job = (await stub.GetJob(tpb.GetJobRequest(id=job_id))).job
        if ok(job):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached the expected state: {job}")


def _ended(job: tpb.Job) -> bool:
    return job.state in (tpb.JOB_STATE_SUCCEEDED, tpb.JOB_STATE_FAILED, tpb.JOB_STATE_CANCELLED)


@pytest.mark.slow
async def test_ppo_jobs_through_the_reward_service(
    common: CommonSettings, token: Token, tiny_model_dir: Path, tiny_reward_dir: Path
) -> None:
    # The reward service serves the version the registry will name the first reward model.
    reward = RewardApp(
        common,
        RewardSettings(port=0, model_path=tiny_reward_dir, model_version="reward-v1", device="cpu"),
    )
    async with serving(reward, common) as scoring:
        wired = common.model_copy(update={"reward_target": f"127.0.0.1:{scoring.port}"})
        trainer = TrainerApp(
            wired,
            TrainerSettings(
                # one thread: the worker shares the two cores with this process's services
                port=0,
                watch_poll_s=0.1,
                worker_threads=1,
                gate_prompts=8,
                gate_safety_prompts=8,
                gate_max_new_tokens=24,
                gate_judges=["clinalign.simulation.judge:panel_judge"],
                gate_replay=False,  # no monitor here; test_monitor_loop replays flags
            ),
        )
        async with serving(trainer, wired) as running:
            async with client(running, wired, token(Role.ADMIN)) as ch:
                stub = trainer_pb2_grpc.TrainerServiceStub(ch)
                for path, kind in (
                    (tiny_reward_dir, common_pb2.MODEL_KIND_REWARD),
                    (tiny_reward_dir, common_pb2.MODEL_KIND_REWARD),  # reward-v2, not served
                    (tiny_model_dir, common_pb2.MODEL_KIND_POLICY),
                ):
                    await _register(stub, wired, path, kind)

                # 1. A job learns and registers a policy version.
                learn = _spec(prompt_set="clinical-train", hyper={"iterations": "30"})
                job_id = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=learn))).job.id
                updates = [u async for u in stub.WatchJob(tpb.WatchJobRequest(id=job_id))]
                done = (await stub.GetJob(tpb.GetJobRequest(id=job_id))).job
                assert done.state == tpb.JOB_STATE_SUCCEEDED, done.failure_reason
                got = await stub.GetModelVersion(
                    tpb.GetModelVersionRequest(version=done.model_version)
                )
                # the policy gate judges it through the same reward service
                promotion = await stub.PromoteModel(
                    tpb.PromoteModelRequest(version=done.model_version)
                )

                # 2. A job whose reward model is not the one the service serves fails.
                mixed = _spec(
                    prompt_set="clinical-train",
                    reward_model_version="reward-v2",
                    hyper={"iterations": "2"},
                )
                mixed_id = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=mixed))).job.id
                mixed_job = await _until(stub, mixed_id, _ended)

                # 3. Killed, resumed, cancelled, resumed again.
                long = _spec(
                    prompt_set="clinical-train",
                    hyper={"iterations": "40", "checkpoint_every": "2"},
                )
                first = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=long))).job.id
                await _until(stub, first, lambda j: j.step >= 5 or _ended(j))
                pid = (await trainer.db.run_sync(lambda s: jobs.get(s, first))).pid
                assert pid is not None and is_worker(pid, first)
                os.killpg(pid, signal.SIGKILL)
                killed = await _until(stub, first, _ended)
                second = (
                    await stub.SubmitJob(
                        tpb.SubmitJobRequest(
                            spec=tpb.JobSpec(kind=tpb.JOB_KIND_PPO, resume_job_id=first)
                        )
                    )
                ).job.id
                second_steps = []
                async for update in stub.WatchJob(tpb.WatchJobRequest(id=second)):
                    if "score" in update.step_metrics:
                        second_steps.append(update.job.step)
                    if update.job.step >= killed.step + 4:
                        break
                cancelled = (await stub.CancelJob(tpb.CancelJobRequest(id=second))).job
                third = (
                    await stub.SubmitJob(
                        tpb.SubmitJobRequest(
                            spec=tpb.JobSpec(kind=tpb.JOB_KIND_PPO, resume_job_id=second)
                        )
                    )
                ).job.id
                third_updates = [u async for u in stub.WatchJob(tpb.WatchJobRequest(id=third))]
                third_done = (await stub.GetJob(tpb.GetJobRequest(id=third))).job
                third_version = await stub.GetModelVersion(
                    tpb.GetModelVersionRequest(version=third_done.model_version)
                )
                resume_succeeded = await rpc_fails(
                    stub.SubmitJob(
                        tpb.SubmitJobRequest(
                            spec=tpb.JobSpec(kind=tpb.JOB_KIND_PPO, resume_job_id=third)
                        )
                    )
                )
                for _ in range(400):  # let the workers exit before the trainer stops
                    if not trainer.executor.followed:
                        break
                    await asyncio.sleep(0.05)

    assert done.state == tpb.JOB_STATE_SUCCEEDED, done.failure_reason
    scores = [u.step_metrics["score"] for u in updates if "score" in u.step_metrics]
    assert len(scores) == 30 and done.total_steps == 30
    assert fmean(scores[-8:]) > fmean(scores[:8]) + 0.2, scores
    # the reward service scored: the reward model's mean over finished responses is logged
    assert any("rm_score" in u.step_metrics for u in updates)
    assert max(u.step_metrics["kl"] for u in updates if "kl" in u.step_metrics) < 15.0
    version = got.version
    assert version.ref.version == done.model_version == "policy-v2"
    assert version.parent_version == "policy-v1" and version.job_id == job_id
    manifest = json.loads(got.manifest_json)
    assert manifest["reward_model_version"] == "reward-v1"
    assert manifest["prompt_set"] == "clinical-train"
    assert manifest["method"]["algorithm"] == "ppo"
    assert manifest["report"] == done.report_uri  # the version leads to its curves
    assert version.weights_hash  # the registry hashed the trained weights
    checks = {c.name: c for c in promotion.checks}
    assert checks["win_rate_vs_served"].message.count("judged by simulated-panel") == 1
    assert "critical_flag_replay" not in checks  # replay is off on this trainer
    # a few nats from its parent, far inside the bound
    assert checks["kl_to_anchor"].passed and "policy-v1" in checks["kl_to_anchor"].message
    report = Path(done.report_uri)
    for name in ("metrics.csv", "report.md", "reward.png", "kl.png", "entropy.png"):
        assert (report / name).is_file(), name

    assert mixed_job.state == tpb.JOB_STATE_FAILED
    assert "serves reward-v1, but this job scores against reward-v2" in mixed_job.failure_reason

    assert killed.state == tpb.JOB_STATE_FAILED and "without a result" in killed.failure_reason
    assert second_steps and second_steps[0] > 1  # continued from a checkpoint, not from 0
    assert second_steps[0] <= killed.step + 1  # from the last checkpoint at or before the kill
    assert cancelled.state == tpb.JOB_STATE_CANCELLED
    assert third_done.state == tpb.JOB_STATE_SUCCEEDED, third_done.failure_reason
    third_steps = [u.job.step for u in third_updates if "score" in u.step_metrics]
    assert third_steps[0] > second_steps[0] and third_steps[-1] == 40
    assert json.loads(third_version.manifest_json)["resumed_from"].startswith(
        f"{second}/checkpoint-"
    )
    assert resume_succeeded.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only a failed or cancelled job can be resumed" in (resume_succeeded.details() or "")


async def _register(
    stub: trainer_pb2_grpc.TrainerServiceStub, common: CommonSettings, path: Path, kind: int
) -> str:
    """Registers a model; the first of its kind serves (a policy on registration, a reward
    or cost model as if the gate had passed it)."""
    first = not (await stub.ListModelVersions(tpb.ListModelVersionsRequest(kind=kind))).versions
    reply = await stub.RegisterModel(
        tpb.RegisterModelRequest(
            path=str(path), kind=kind, serve_if_none=kind == common_pb2.MODEL_KIND_POLICY
        )
    )
    version = str(reply.version.ref.version)
    if first and kind != common_pb2.MODEL_KIND_POLICY:
        serve_in_registry(common, version)
    return version


async def test_bad_ppo_specs_name_their_field(
    common: CommonSettings,
    token: Token,
    tiny_model_dir: Path,
    tiny_reward_dir: Path,
    tmp_path: Path,
) -> None:
    no_prompts = tmp_path / "empty.jsonl"
    no_prompts.write_text('{"question": "x"}\n')
    trainer = TrainerApp(common, TrainerSettings(port=0))
    async with serving(trainer, common) as running:
        async with client(running, common, token(Role.ADMIN)) as ch:
            stub = trainer_pb2_grpc.TrainerServiceStub(ch)
            await stub.RegisterModel(
                tpb.RegisterModelRequest(
                    path=str(tiny_model_dir), kind=common_pb2.MODEL_KIND_POLICY, serve_if_none=True
                )
            )
            no_reward = await rpc_fails(
                stub.SubmitJob(tpb.SubmitJobRequest(spec=_spec(prompt_set="clinical-train")))
            )
            await _register(stub, common, tiny_reward_dir, common_pb2.MODEL_KIND_REWARD)
            cases = {
                "spec.prompt_set: name exactly one source": _spec(
                    prompt_set="clinical-train", snapshot_id="snap-1"
                ),
                "spec.prompt_set: 'nursing' is neither a built-in": _spec(prompt_set="nursing"),
                "spec.prompt_set: line 1 of": _spec(prompt_set=str(no_prompts)),
                "spec.reward_model_version: 'reward-v9' is not a registered": _spec(
                    prompt_set="clinical-train", reward_model_version="reward-v9"
                ),
                "spec.hyperparameters[minibatches]: must divide": _spec(
                    prompt_set="clinical-train", hyper={"minibatches": "3"}
                ),
                "spec.hyperparameters[critic]: must be one of": _spec(
                    prompt_set="clinical-train", hyper={"critic": "twin"}
                ),
                "spec.hyperparameters[cost_source]: is model, but no cost model is served": _spec(
                    prompt_set="clinical-train", hyper={"cost_source": "model"}
                ),
            }
            errors = {
                expected: await rpc_fails(stub.SubmitJob(tpb.SubmitJobRequest(spec=spec)))
                for expected, spec in cases.items()
            }
            unknown_resume = await rpc_fails(
                stub.SubmitJob(
                    tpb.SubmitJobRequest(
                        spec=tpb.JobSpec(kind=tpb.JOB_KIND_PPO, resume_job_id="job-x")
                    )
                )
            )
            listed = await stub.ListJobs(tpb.ListJobsRequest())

    assert no_reward.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (no_reward.details() or "").startswith(
        "spec.reward_model_version: is required while no reward model is served"
    )
    for expected, err in errors.items():
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
        assert (err.details() or "").startswith(expected), err.details()
    assert unknown_resume.code() == grpc.StatusCode.NOT_FOUND
    assert "spec.resume_job_id" in (unknown_resume.details() or "")
    assert not listed.jobs  # nothing was half-submitted


@pytest.mark.slow
async def test_a_ppo_job_constrained_by_the_served_cost_model(
    common: CommonSettings,
    token: Token,
    tiny_model_dir: Path,
    tiny_reward_dir: Path,
    tiny_cost_dir: Path,
) -> None:
    """cost_source=model (issue 21): the job pins the served cost version at submission,
    is costed by the reward service in the same Score calls, logs λ and the expected cost,
    and names the cost model in its lineage."""
    reward = RewardApp(
        common,
        RewardSettings(
            port=0,
            model_path=tiny_reward_dir,
            model_version="reward-v1",
            cost_model_path=tiny_cost_dir,
            cost_model_version="cost-v1",
            device="cpu",
        ),
    )
    async with serving(reward, common) as scoring:
        wired = common.model_copy(update={"reward_target": f"127.0.0.1:{scoring.port}"})
        trainer = TrainerApp(wired, TrainerSettings(port=0, watch_poll_s=0.1, worker_threads=1))
        async with serving(trainer, wired) as running:
            async with client(running, wired, token(Role.ADMIN)) as ch:
                stub = trainer_pb2_grpc.TrainerServiceStub(ch)
                for path, kind in (
                    (tiny_reward_dir, common_pb2.MODEL_KIND_REWARD),
                    (tiny_model_dir, common_pb2.MODEL_KIND_POLICY),
                    (tiny_cost_dir, common_pb2.MODEL_KIND_COST),
                ):
                    await _register(stub, wired, path, kind)
                spec = _spec(
                    prompt_set="clinical-train",
                    hyper={
                        "iterations": "3",
                        "advantage_estimator": "rloo",
                        "samples_per_prompt": "2",
                        "cost_source": "model",
                        "cost_budget": "0.05",
                    },
                )
                job_id = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=spec))).job.id
                done = await _until(stub, job_id, _ended)
                got = await stub.GetModelVersion(
                    tpb.GetModelVersionRequest(version=done.model_version)
                )
    assert done.state == tpb.JOB_STATE_SUCCEEDED, done.failure_reason
    manifest = json.loads(got.manifest_json)
    assert manifest["cost_model_version"] == "cost-v1"
    assert manifest["method"]["algorithm"] == "rloo-lagrangian"
    history = [figures for _, figures in manifest["history"]]
    costs = [f["cost"] for f in history if f.get("cost") is not None]
    assert costs and all(0.0 < c < 1.0 for c in costs)  # the cost model's probabilities
    assert history[0]["lagrange_multiplier"] == 1.0
    assert "lagrange_multiplier" in done.metrics  # (the last batch may have no cost: none ended)
