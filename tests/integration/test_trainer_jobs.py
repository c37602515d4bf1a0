"""Trainer jobs through real gRPC with real worker processes: a reward_model job trained on
a snapshot of a real preference service, watched to success and registered; bounded
concurrency and cancellation; spec validation; and what a restarted trainer does with
the jobs an earlier one left RUNNING."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from clinalign.cli.stack import wait_serving
from clinalign.common.artefacts import NORMALISATION_FILE
from clinalign.common.auth import Role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.errors import InvalidArgument
from clinalign.common.v1 import common_pb2
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.jobs.executor import is_worker
from clinalign.trainer.jobs.supervised import parse_hyperparameters
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.server import MIGRATIONS as TRAINER_MIGRATIONS
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2 as tpb
from clinalign.trainer.v1 import trainer_pb2_grpc
from tests.conftest import client, free_ports, reset_tables, rpc_fails, serving
from tests.e2e.test_reward_pipeline import _populate

Token = Callable[[Role], str]
TRAINER = "clinalign.trainer.v1.TrainerService"
# A learning rate for the 48-wide tiny model and a short normalisation sample (as in
# test_reward_training), so a job trains in seconds.
HYPER = {
    "epochs": "2",
    "learning_rate": "1e-3",
    "batch_size": "8",
    "norm_prompts": "4",
    "norm_max_new_tokens": "8",
}


def _reward_spec(base_model: str, snapshot_id: str, **extra: object) -> tpb.JobSpec:
    return tpb.JobSpec(
        kind=tpb.JOB_KIND_REWARD_MODEL,
        snapshot_id=snapshot_id,
        base_model=base_model,
        hyperparameters=HYPER,
        **extra,  # type: ignore[arg-type]
    )


async def _until(
    stub: trainer_pb2_grpc.TrainerServiceStub, job_id: str, ok: Callable[[tpb.Job], bool]
) -> tpb.Job:
    for _ in range(600):
        job = (await stub.GetJob(tpb.GetJobRequest(id=job_id))).job
        if ok(job):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached the expected state: {job}")


@pytest.mark.slow
async def test_reward_model_job_trains_registers_and_cancels(
    common: CommonSettings, token: Token, tiny_model_dir: Path, database_url: str
) -> None:
    reset_tables(database_url, registry.Base)
    resolved = tiny_model_dir.resolve()  # noqa: ASYNC240 - no I/O worth a thread
    preference = PreferenceApp(common, PreferenceSettings(port=0))
    async with serving(preference, common) as pref:
        async with client(pref, common, token(Role.ADMIN)) as ch:
            pstub = preference_pb2_grpc.PreferenceServiceStub(ch)
            snapshot_id = await _populate(pstub, 16)
            snapshot = (await pstub.GetSnapshot(pb.GetSnapshotRequest(id=snapshot_id))).snapshot
        wired = common.model_copy(update={"preference_target": f"127.0.0.1:{pref.port}"})
        trainer = TrainerApp(
            wired, TrainerSettings(port=0, watch_poll_s=0.1, database_url=database_url)
        )
        async with serving(trainer, wired) as running:
            async with client(running, wired, token(Role.ML_ENGINEER)) as ch:
                stub = trainer_pb2_grpc.TrainerServiceStub(ch)
                spec = _reward_spec(str(tiny_model_dir), snapshot_id, idempotency_key="rm-1")
                first = await stub.SubmitJob(tpb.SubmitJobRequest(spec=spec))
                again = await stub.SubmitJob(tpb.SubmitJobRequest(spec=spec))
                changed = tpb.JobSpec()
                changed.CopyFrom(spec)
                changed.hyperparameters["epochs"] = "3"
                reused = await rpc_fails(stub.SubmitJob(tpb.SubmitJobRequest(spec=changed)))
                job_id = first.job.id
                updates = [u async for u in stub.WatchJob(tpb.WatchJobRequest(id=job_id))]
                done = (await stub.GetJob(tpb.GetJobRequest(id=job_id))).job
                versions = await stub.ListModelVersions(
                    tpb.ListModelVersionsRequest(kind=common_pb2.MODEL_KIND_REWARD)
                )
                finished = await rpc_fails(stub.CancelJob(tpb.CancelJobRequest(id=job_id)))
                assert reused.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert f"was already used for job {job_id} with another spec" in (
                    reused.details() or ""
                )
                # A warm start: a reward_model job that continues the registered reward-v1.
                warm_spec = _reward_spec("reward-v1", snapshot_id)
                warm_id = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=warm_spec))).job.id
                warm = [u.job async for u in stub.WatchJob(tpb.WatchJobRequest(id=warm_id))][-1]
                warm_version = await stub.GetModelVersion(
                    tpb.GetModelVersionRequest(version=warm.model_version)
                )

                # Bounded concurrency (max_running_jobs 1) and cancellation of a live worker.
                ids = [
                    (
                        await stub.SubmitJob(
                            tpb.SubmitJobRequest(
                                spec=_reward_spec(str(tiny_model_dir), snapshot_id)
                            )
                        )
                    ).job.id
                    for _ in range(3)
                ]
                queued_cancel = (await stub.CancelJob(tpb.CancelJobRequest(id=ids[2]))).job
                running_job = await _until(stub, ids[0], lambda j: j.state == tpb.JOB_STATE_RUNNING)
                waiting = (await stub.GetJob(tpb.GetJobRequest(id=ids[1]))).job
                pid = (await trainer.db.run_sync(lambda s: jobs.get(s, ids[0]))).pid
                assert pid is not None and is_worker(pid, ids[0])
                cancelled = (await stub.CancelJob(tpb.CancelJobRequest(id=ids[0]))).job
                gone = not is_worker(pid, ids[0])
                await _until(stub, ids[1], lambda j: j.state == tpb.JOB_STATE_RUNNING)
                await stub.CancelJob(tpb.CancelJobRequest(id=ids[1]))
                listed = await stub.ListJobs(tpb.ListJobsRequest(page_size=2))
                rest = await stub.ListJobs(
                    tpb.ListJobsRequest(page_size=2, page_token=listed.next_page_token)
                )
                only_cancelled = await stub.ListJobs(
                    tpb.ListJobsRequest(states=[tpb.JOB_STATE_CANCELLED])
                )
                # A snapshot the preference service does not hold: the worker fails it.
                unknown = _reward_spec(str(tiny_model_dir), "snap-unknown")
                failing = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=unknown))).job.id
                failed = [u.job async for u in stub.WatchJob(tpb.WatchJobRequest(id=failing))]
                for _ in range(400):  # let the workers exit before the trainer stops
                    if not trainer.executor.followed:
                        break
                    await asyncio.sleep(0.05)

    assert first.job.state in (tpb.JOB_STATE_QUEUED, tpb.JOB_STATE_RUNNING)
    assert (again.replayed, again.job.id) == (True, job_id)
    assert first.job.executor == tpb.EXECUTOR_KIND_LOCAL
    assert done.state == tpb.JOB_STATE_SUCCEEDED, done.failure_reason
    assert updates[-1].job.state == tpb.JOB_STATE_SUCCEEDED
    losses = [u.step_metrics["loss"] for u in updates if "loss" in u.step_metrics]
    steps = [u.job.step for u in updates if "loss" in u.step_metrics]
    assert len(losses) >= 2 and steps == sorted(steps) and steps[-1] == done.total_steps
    assert {tpb.JOB_STATE_RUNNING, tpb.JOB_STATE_SUCCEEDED} <= {u.job.state for u in updates}
    assert done.model_version == versions.versions[0].ref.version == "reward-v1"
    registered = versions.versions[0]
    content_hash = json.loads(snapshot.manifest_json)["content_hash"]
    assert registered.snapshot_hash == content_hash
    assert registered.job_id == job_id
    assert done.metrics["train_steps"] == done.total_steps
    report_dir = Path(done.report_uri)
    assert await asyncio.to_thread(Path(report_dir.parent, "snapshot.jsonl").is_file)
    table = await asyncio.to_thread(Path(report_dir, "metrics.csv").read_text)
    assert len(table.splitlines()) == 1 + len(losses)  # a header and one row per logged step
    assert await asyncio.to_thread(Path(report_dir, "loss.png").is_file)
    assert done.start_time.seconds and done.end_time.seconds
    assert finished.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is succeeded; it cannot become cancelled" in (finished.details() or "")
    assert warm.state == tpb.JOB_STATE_SUCCEEDED, warm.failure_reason
    assert warm_version.version.parent_version == "reward-v1"
    warm_manifest = json.loads(warm_version.manifest_json)
    assert warm_manifest["method"]["init"].startswith("continues the reward model")
    assert warm_manifest["reference_policy"] == str(resolved)

    assert running_job.state == tpb.JOB_STATE_RUNNING
    assert waiting.state == tpb.JOB_STATE_QUEUED  # one slot: it waited
    assert cancelled.state == tpb.JOB_STATE_CANCELLED and gone
    assert queued_cancel.state == tpb.JOB_STATE_CANCELLED
    assert not queued_cancel.HasField("start_time")  # never ran
    assert [j.id for j in listed.jobs] == [ids[2], ids[1]]
    assert [j.id for j in rest.jobs] == [ids[0], warm_id]
    assert {j.id for j in only_cancelled.jobs} == set(ids)
    assert failed[-1].state == tpb.JOB_STATE_FAILED
    assert failed[-1].failure_reason.startswith("preference service: NOT_FOUND: "), failed[-1]


async def test_bad_specs_name_their_field(
    common: CommonSettings, token: Token, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = str(tiny_model_dir)
    reward_dir = tmp_path / "a-reward-model"  # what a policy job must not start from
    reward_dir.mkdir()
    (reward_dir / "config.json").write_text("{}")
    (reward_dir / NORMALISATION_FILE).write_text("{}")
    cases: list[tuple[tpb.JobSpec, grpc.StatusCode, str]] = [
        (tpb.JobSpec(), grpc.StatusCode.INVALID_ARGUMENT, "spec.kind: is required: one of JOB_K"),
        (
            tpb.JobSpec(kind=tpb.JOB_KIND_PPO),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.prompt_set: name exactly one source of prompts",
        ),
        (
            _reward_spec(model, "s1", executor=tpb.EXECUTOR_KIND_KUBERNETES),
            grpc.StatusCode.FAILED_PRECONDITION,
            "spec.executor: the kubernetes executor is not available yet",
        ),
        (_reward_spec(model, ""), grpc.StatusCode.INVALID_ARGUMENT, "spec.snapshot_id: is req"),
        (
            _reward_spec("", "s1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.base_model: is required while no policy is served",
        ),
        (
            _reward_spec("policy-v7", "s1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.base_model: 'policy-v7' is neither a registered policy or reward version nor",
        ),
        (  # a name the file system refuses (found by the fuzz test): never INTERNAL
            _reward_spec("[" * 5000, "s1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"spec.base_model: '\[\[\[.*' is neither a registered policy or reward version",
        ),
        (
            tpb.JobSpec(kind=tpb.JOB_KIND_PPO, prompt_set="clinical-train", base_model="v7"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.base_model: 'v7' is neither a registered policy version nor",
        ),
        (
            tpb.JobSpec(
                kind=tpb.JOB_KIND_PPO, prompt_set="clinical-train", base_model=str(reward_dir)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.base_model: '.*a-reward-model' is a reward model, not a policy to start from",
        ),
        (
            tpb.JobSpec(
                kind=tpb.JOB_KIND_REWARD_MODEL,
                snapshot_id="s1",
                base_model=model,
                hyperparameters={"lr": "1e-3"},
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"spec.hyperparameters\[lr\]: is not a hyperparameter; known: epochs",
        ),
        (
            tpb.JobSpec(
                kind=tpb.JOB_KIND_REWARD_MODEL,
                snapshot_id="s1",
                base_model=model,
                hyperparameters={"batch_size": "eight"},
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"spec.hyperparameters\[batch_size\]: 'eight' is not a valid int",
        ),
        (
            tpb.JobSpec(
                kind=tpb.JOB_KIND_REWARD_MODEL,
                snapshot_id="s1",
                base_model=model,
                hyperparameters={"learning_rate": "-1"},
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"spec.hyperparameters\[learning_rate\]: must be positive, got -1.0",
        ),
        (
            _reward_spec(model, "s1", lora=tpb.LoraSettings(enabled=True, rank=999)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.lora.rank: must be between 1 and 256, got 999",
        ),
    ]
    app = TrainerApp(common, TrainerSettings(port=0))
    async with serving(app, common) as running:
        async with client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = trainer_pb2_grpc.TrainerServiceStub(ch)
            errors = [
                await rpc_fails(stub.SubmitJob(tpb.SubmitJobRequest(spec=s))) for s, *_ in cases
            ]
            missing = await rpc_fails(stub.GetJob(tpb.GetJobRequest(id="job-nope")))
            bad_state = await rpc_fails(
                stub.ListJobs(tpb.ListJobsRequest(states=[tpb.JOB_STATE_UNSPECIFIED]))
            )
            listed = await stub.ListJobs(tpb.ListJobsRequest())
        async with client(running, common, token(Role.CLINICIAN)) as ch:
            denied = await rpc_fails(
                trainer_pb2_grpc.TrainerServiceStub(ch).ListJobs(tpb.ListJobsRequest())
            )
    for err, (_, code, pattern) in zip(errors, cases, strict=True):
        assert err.code() == code, err.details()
        assert re.match(pattern, err.details() or ""), err.details()
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "id: job 'job-nope' not found" in (missing.details() or "")
    assert bad_state.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad_state.details() or "").startswith("states:")
    assert list(listed.jobs) == []  # nothing invalid was persisted
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


def test_hyperparameters_are_read_by_their_field_type() -> None:
    values = {
        "epochs": "1.5",
        "batch_size": "4",
        "lr_scheduler": "cosine",
        "bf16": "false",
        "center_rewards_coefficient": "none",
    }
    assert parse_hyperparameters(values, seed=7) == {
        "epochs": 1.5,
        "batch_size": 4,
        "lr_scheduler": "cosine",
        "bf16": False,
        "center_rewards_coefficient": None,
        "seed": 7,
    }
    assert parse_hyperparameters({"seed": "3"}, seed=7) == {"seed": 3}
    with pytest.raises(InvalidArgument, match=r"spec.hyperparameters\[bf16\]: 'maybe' is not"):
        parse_hyperparameters({"bf16": "maybe"}, seed=0)


def _running_row(db: Database, start: Callable[[str], int]) -> str:
    """A job an earlier trainer left RUNNING, with the pid ``start(job_id)`` gives."""
    with db.sessions.begin() as session:
        spec = {"kind": "JOB_KIND_REWARD_MODEL", "snapshot_id": "s1"}
        job, _ = jobs.submit(session, "reward_model", "local", spec, {}, "")
        jobs.transition(session, job.id, jobs.RUNNING, pid=start(job.id))
        return job.id


def _left_by_an_earlier_trainer(common: CommonSettings) -> tuple[str, str, subprocess.Popen[bytes]]:
    """Two RUNNING jobs: one whose process has exited, one whose (stand-in) worker lives."""
    db = Database(default_sqlite_url(common.data_dir, "trainer"), registry.Base, TRAINER_MIGRATIONS)
    db.create_schema()
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    dead_id = _running_row(db, lambda _: exited.pid)
    started: list[subprocess.Popen[bytes]] = []

    def stand_in(job_id: str) -> int:
        # Its command line names the job, as a real worker's does.
        code = "import time; time.sleep(60)"
        argv = [sys.executable, "-c", code, "clinalign.trainer.jobs.worker", job_id]
        started.append(subprocess.Popen(argv, start_new_session=True))
        return started[-1].pid

    alive_id = _running_row(db, stand_in)
    db.dispose()
    return dead_id, alive_id, started[0]


async def test_restart_fails_dead_jobs_and_reattaches_live_ones(
    common: CommonSettings, token: Token
) -> None:
    dead_id, alive_id, live = _left_by_an_earlier_trainer(common)
    try:
        app = TrainerApp(common, TrainerSettings(port=0, cancel_grace_s=5))
        async with serving(app, common) as running:
            async with client(running, common, token(Role.ML_ENGINEER)) as ch:
                stub = trainer_pb2_grpc.TrainerServiceStub(ch)
                dead = (await stub.GetJob(tpb.GetJobRequest(id=dead_id))).job
                alive = (await stub.GetJob(tpb.GetJobRequest(id=alive_id))).job
                cancelled = (await stub.CancelJob(tpb.CancelJobRequest(id=alive_id))).job
        code = await asyncio.to_thread(live.wait, 5)
        assert code == -15  # SIGTERM
    finally:
        if live.poll() is None:
            os.kill(live.pid, 9)
            await asyncio.to_thread(live.wait)
    assert dead.state == tpb.JOB_STATE_FAILED
    assert dead.failure_reason == "trainer restarted and the job's process had exited"
    assert alive.state == tpb.JOB_STATE_RUNNING  # re-attached, not failed
    assert cancelled.state == tpb.JOB_STATE_CANCELLED


async def _trainer_process(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clinalign.trainer", env=env, stdout=out, stderr=out
        )


@pytest.mark.slow
async def test_a_sigkilled_trainer_leaves_its_job_running_and_the_next_one_follows_it(
    common: CommonSettings, token: Token, tiny_model_dir: Path, tmp_path: Path
) -> None:
    port, metrics = free_ports(2)
    target = f"127.0.0.1:{port}"
    preference = PreferenceApp(common, PreferenceSettings(port=0))
    async with serving(preference, common) as pref:
        async with client(pref, common, token(Role.ADMIN)) as ch:
            snapshot_id = await _populate(preference_pb2_grpc.PreferenceServiceStub(ch), 16)
        env = dict(
            os.environ,
            CLINALIGN_DATA_DIR=str(common.data_dir),
            CLINALIGN_PREFERENCE_TARGET=f"127.0.0.1:{pref.port}",
            CLINALIGN_TRAINER_PORT=str(port),
            CLINALIGN_TRAINER_METRICS_PORT=str(metrics),
            CLINALIGN_TRAINER_WATCH_POLL_S="0.1",
            CLINALIGN_GRACE_PERIOD_S="1",
        )
        first = await _trainer_process(env, tmp_path / "trainer.log")
        second = None
        try:
            await wait_serving(target, common, TRAINER)
            async with open_channel(target, common, token(Role.ML_ENGINEER)) as ch:
                stub = trainer_pb2_grpc.TrainerServiceStub(ch)
                spec = _reward_spec(str(tiny_model_dir), snapshot_id)
                job_id = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=spec))).job.id
                await _until(stub, job_id, lambda j: j.state == tpb.JOB_STATE_RUNNING)
            first.kill()
            await first.wait()
            pid = await asyncio.to_thread(_pid_of, common, job_id)
            orphaned_alive = is_worker(pid, job_id)
            second = await _trainer_process(env, tmp_path / "trainer.log")
            await wait_serving(target, common, TRAINER)
            async with open_channel(target, common, token(Role.ML_ENGINEER)) as ch:
                stub = trainer_pb2_grpc.TrainerServiceStub(ch)
                updates = [u.job async for u in stub.WatchJob(tpb.WatchJobRequest(id=job_id))]
        finally:
            for proc in (first, second):
                if proc is not None and proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
    assert orphaned_alive  # SIGKILL of the trainer did not take its worker with it
    assert updates[-1].state == tpb.JOB_STATE_SUCCEEDED, updates[-1].failure_reason
    assert updates[-1].model_version == "reward-v1"


def _pid_of(common: CommonSettings, job_id: str) -> int:
    db = Database(default_sqlite_url(common.data_dir, "trainer"), registry.Base, TRAINER_MIGRATIONS)
    try:
        with db.sessions.begin() as session:
            pid = jobs.get(session, job_id).pid
    finally:
        db.dispose()
    assert pid is not None
    return pid
