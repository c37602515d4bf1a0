"""The run that retrains: evaluating the policy, starting a run when a trigger fires, and
driving it step by step through the peers (snapshot → reward-model job → its gate →
activation → [cost-model job → its gate → activation] → PPO job → the policy gate →
activation), resuming after a restart. The cost steps run when the policy has cost
hyperparameters (``retrain_cost_model``): the new flags teach the cost model that a
``cost_source: model`` PPO job is then constrained by."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import grpc.aio
from sqlalchemy import select
from sqlalchemy.orm import Session

from clinalign.common.channels import Clients
from clinalign.common.db import Database
from clinalign.common.errors import ClinAlignError, FailedPrecondition, Unavailable
from clinalign.common.protos import enum_name
from clinalign.common.v1 import common_pb2
from clinalign.monitor import metrics
from clinalign.monitor.retraining.runs import (
    FAILED,
    PROMOTED,
    REFUSED,
    RUNNING,
    STATE_NAMES,
    Cut,
    RunView,
    finish,
    get_run,
    last_run_pairs,
    record_step,
    running_run,
    set_versions,
    start_run,
)
from clinalign.monitor.retraining.triggers import (
    RUN_SNAPSHOT,
    SERVED_REWARD,
    SERVED_REWARD_BASE,
    STOP,
    Policy,
    Signals,
    triggers,
    window_signals,
)
from clinalign.monitor.store import RunRow

log = logging.getLogger("clinalign.monitor.retraining")
T = TypeVar("T")

RPC_TIMEOUT_S = 120.0
# A gate decision runs the candidate over held-out prompts: give it room.
GATE_TIMEOUT_S = 1800.0
RETRIES = 3  # UNAVAILABLE from a peer is retried this many times, retrain_poll_s apart


class StepFailed(Exception):
    """A step that ends the run FAILED; the message is the recorded reason."""


@dataclass(frozen=True)
class Evaluation:
    triggered: bool
    reasons: list[str]
    run: RunView | None


class Retraining:
    """Evaluates the policy and drives runs through the peers' stubs (duck-typed, so tests
    may pass labelled stand-ins): ``preference``, ``trainer``, ``reward``, ``generation``."""

    def __init__(self, db: Database, peers: Clients, policy: Policy) -> None:
        self.db = db
        self.peers = peers
        self.policy = policy
        self.tasks: set[asyncio.Task[None]] = set()

    # -- evaluation

    async def evaluate(self, dry_run: bool) -> Evaluation:
        try:
            served = await self.served_policy()
            cut = await self.cut_snapshot()
        except grpc.aio.AioRpcError as err:
            # A peer's refusal is this service's precondition, not the caller's input.
            raise FailedPrecondition(
                f"the retraining policy could not read its inputs: {err.code().name}: "
                f"{err.details()}"
            ) from None
        end = datetime.now(UTC)
        start = end - timedelta(minutes=self.policy.window_minutes)
        bins = self.policy.psi_bins

        def read(s: Session) -> tuple[int, tuple[int, int, float | None]]:
            window = window_signals(s, served, start, end, bins) if served else (0, 0, None)
            return last_run_pairs(s), window

        last, (outputs, confirmed, psi) = await self.db.run_sync(read)
        fired = triggers(
            Signals(cut.snapshot_hash, cut.pairs, last, served, outputs, confirmed, psi),
            self.policy,
        )
        reasons = [t.reason for t in fired]
        if dry_run or not fired:
            metrics.RETRAINING_EVALUATIONS.labels("dry_run" if dry_run else "quiet").inc()
            # A run in progress is reported all the same: a caller racing the one that
            # started it (whose run already holds this data) sees that run, not nothing.
            return Evaluation(bool(fired), reasons, await self.db.run_sync(running_run))
        run, created = await self.db.run_write(lambda s: start_run(s, fired, cut, served))
        metrics.RETRAINING_EVALUATIONS.labels("triggered").inc()
        if created:
            metrics.RETRAINING_RUNS.labels("running").inc()
            log.info("retraining run started", extra={"fields": {"run": run.id}})
            self.spawn(run.id)
        return Evaluation(True, reasons, run)

    async def served_policy(self) -> str:
        """The policy version the registry serves; "" when none."""
        served = await self._served(common_pb2.MODEL_KIND_POLICY)
        return str(served.ref.version) if served else ""

    async def _served(self, kind: common_pb2.ModelKind.ValueType) -> common_pb2.ModelVersion | None:
        """The version of ``kind`` the registry serves, or None."""
        from clinalign.trainer.v1 import trainer_pb2 as tpb

        token = ""
        while True:
            reply = await self._call(
                self.peers.trainer.ListModelVersions,
                tpb.ListModelVersionsRequest(kind=kind, page_size=100, page_token=token),
            )
            for v in reply.versions:
                if v.stage == common_pb2.MODEL_STAGE_SERVING:
                    return v
            token = reply.next_page_token
            if not token:
                return None

    async def _reward_base(self, setting: str) -> str:
        """The base_model of a run's reward_model job for ``retrain_reward_base_model``;
        "" (the trainer's served policy) when a served-reward setting finds none served."""
        if setting not in (SERVED_REWARD, SERVED_REWARD_BASE):
            return setting
        version = await self._served(common_pb2.MODEL_KIND_REWARD)
        if setting == SERVED_REWARD:
            return version.ref.version if version else ""
        # back through continued reward models to the policy the first was trained from
        while version is not None and version.kind == common_pb2.MODEL_KIND_REWARD:
            if not version.parent_version:
                return ""  # one without a recorded base
            version = await self._version(version.parent_version)
        return version.ref.version if version else ""

    async def _version(self, name: str) -> common_pb2.ModelVersion:
        from clinalign.trainer.v1 import trainer_pb2 as tpb

        reply = await self._call(
            self.peers.trainer.GetModelVersion, tpb.GetModelVersionRequest(version=name)
        )
        return reply.version

    async def cut_snapshot(self) -> Cut:
        from clinalign.preference.v1 import preference_pb2 as ppb

        at = datetime.now(UTC)
        reply = await self._call(
            self.peers.preference.CreateSnapshot,
            ppb.CreateSnapshotRequest(
                filter=ppb.SnapshotFilter(
                    min_agreement=self.policy.min_agreement,
                    # Every annotator's label: deduplicating (prompt, chosen, rejected)
                    # triples keeps one of the labels that agree and every one that
                    # dissents, so a pair judged two to one trains and scores as one to one.
                    deduplicate=False,
                    tie_handling=ppb.TIE_HANDLING_DROP,
                    eval_fraction=self.policy.eval_fraction,
                )
            ),
        )
        snap = reply.snapshot
        return Cut(snap.id, snap.content_hash, snap.train_pairs + snap.eval_pairs, at)

    # -- runs

    def spawn(self, run_id: str) -> None:
        task = asyncio.create_task(self.execute(run_id), name=f"retraining-{run_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def resume(self) -> list[str]:
        """Carries RUNNING runs (a restart interrupted them) on from their last step."""
        ids = await self.db.run_sync(
            lambda s: list(s.scalars(select(RunRow.id).where(RunRow.state == RUNNING)))
        )
        for run_id in ids:
            log.info("retraining run resumed", extra={"fields": {"run": run_id}})
            self.spawn(run_id)
        return ids

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def execute(self, run_id: str) -> None:
        try:
            state, reason, promoted = await self._drive(run_id)
        except asyncio.CancelledError:
            raise  # the monitor is stopping: the run stays RUNNING and resumes on start
        except StepFailed as err:
            state, reason, promoted = FAILED, str(err), ""
        except grpc.aio.AioRpcError as err:
            state, reason, promoted = FAILED, f"{err.code().name}: {err.details()}", ""
        except ClinAlignError as err:
            state, reason, promoted = FAILED, err.message, ""
        except Exception as err:  # a bug must end the run, not leave it RUNNING forever
            log.exception("retraining run failed", extra={"fields": {"run": run_id}})
            state, reason, promoted = FAILED, f"internal error: {type(err).__name__}", ""
        if state == RUNNING:
            return
        ended = await self.db.run_write(lambda s: finish(s, run_id, state, reason, promoted))
        if ended:
            metrics.RETRAINING_RUNS.labels(STATE_NAMES[state]).inc()
            log.info(
                "retraining run ended",
                extra={"fields": {"run": run_id, "state": STATE_NAMES[state]}},
            )

    async def _drive(self, run_id: str) -> tuple[int, str, str]:
        """Runs the steps not yet recorded; (final state, reason, promoted version)."""
        from clinalign.trainer.v1 import trainer_pb2 as tpb

        run = await self._run(run_id)
        if run.state != RUNNING:
            return run.state, run.reason, run.promoted_version
        p = self.policy
        if run.step("reward_model_job") is None:
            base = await self._reward_base(p.reward_base_model)
            spec = tpb.JobSpec(
                kind=tpb.JOB_KIND_REWARD_MODEL,
                snapshot_id=run.snapshot_id,
                base_model=base,
                hyperparameters=p.reward_hyperparameters,
                seed=p.seed,
                idempotency_key=f"{run.id}:reward_model_job",
                display_name=f"retraining {run.id} reward model",
            )
            version = await self._guard(
                run.id, "reward_model_job", self._job(run.id, "reward_model_job", spec)
            )
            await self.db.run_write(lambda s: set_versions(s, run.id, reward_version=version))
            run = await self._run(run_id)
        gate = self._gate(run, "promote_reward_model", run.reward_version)
        reward, note = run.reward_version, ""
        if not await self._guard(run.id, "promote_reward_model", gate):
            refused = f"the reward-model gate refused {run.reward_version}"
            if p.on_reward_refused == STOP:
                return REFUSED, refused, ""
            kept = run.step("activate_reward_model")
            reward = kept.ref if kept else await self._keep_served_reward(run)
            if not reward:
                return REFUSED, f"{refused} and no reward model serves", ""
            note = f"{refused}; the policy trained against the served {reward}"
        elif run.step("activate_reward_model") is None:
            activation = self._activate(
                run.id, "activate_reward_model", run.reward_version, reward=True
            )
            await self._guard(run.id, "activate_reward_model", activation)
        if p.cost_hyperparameters is not None:
            cost_note = await self._cost_steps(run)
            note = "; ".join(n for n in (note, cost_note) if n)
        if run.step("ppo_job") is None:
            on_snapshot = p.prompt_set == RUN_SNAPSHOT
            spec = tpb.JobSpec(
                kind=tpb.JOB_KIND_PPO,
                prompt_set="" if on_snapshot else p.prompt_set,
                snapshot_id=run.snapshot_id if on_snapshot else "",
                base_model=run.served_policy,
                reward_model_version=reward,
                hyperparameters=p.ppo_hyperparameters,
                seed=p.seed,
                idempotency_key=f"{run.id}:ppo_job",
                display_name=f"retraining {run.id} policy",
            )
            version = await self._guard(run.id, "ppo_job", self._job(run.id, "ppo_job", spec))
            await self.db.run_write(lambda s: set_versions(s, run.id, policy_version=version))
            run = await self._run(run_id)
        gate = self._gate(run, "promote_policy", run.policy_version)
        if not await self._guard(run.id, "promote_policy", gate):
            refused = f"the policy gate refused {run.policy_version}"
            return REFUSED, f"{note}; {refused}" if note else refused, ""
        if run.step("activate_policy") is None:
            activation = self._activate(run.id, "activate_policy", run.policy_version, reward=False)
            await self._guard(run.id, "activate_policy", activation)
        return PROMOTED, note, run.policy_version

    async def _cost_steps(self, run: RunView) -> str:
        """The cost model's steps: a cost_model job on the run's snapshot (from the served
        policy), its gate, and its activation in the reward service; a refused one, or a
        job that failed (a snapshot with no clean or no harmful answer fails it), leaves the
        served cost model serving and the run goes on to the policy. Returns a note for the
        run's reason ("" when the new one serves)."""
        from clinalign.trainer.v1 import trainer_pb2 as tpb

        done = run.step("cost_model_job")
        if done is not None and not done.outcome.startswith("succeeded"):
            return f"the cost_model job {done.outcome}; the served cost model stays"
        if done is None:
            spec = tpb.JobSpec(
                kind=tpb.JOB_KIND_COST_MODEL,
                snapshot_id=run.snapshot_id,
                base_model=run.served_policy,
                hyperparameters=self.policy.cost_hyperparameters or {},
                seed=self.policy.seed,
                idempotency_key=f"{run.id}:cost_model_job",
                display_name=f"retraining {run.id} cost model",
            )
            try:
                version = await self._job(run.id, "cost_model_job", spec)
            except StepFailed as err:  # recorded by _job
                return f"{err}; the served cost model stays"
        else:  # resumed: the version the recorded job registered
            job = await self._call(self.peers.trainer.GetJob, tpb.GetJobRequest(id=done.ref))
            version = str(job.job.model_version)
        gate = self._gate(await self._run(run.id), "promote_cost_model", version)
        if not await self._guard(run.id, "promote_cost_model", gate):
            return f"the cost-model gate refused {version}; the served cost model stays"
        if (await self._run(run.id)).step("activate_cost_model") is None:
            activation = self._activate(run.id, "activate_cost_model", version, reward=True)
            await self._guard(run.id, "activate_cost_model", activation)
        return ""

    async def _keep_served_reward(self, run: RunView) -> str:
        """After the reward-model gate refused the run's model: the reward model that
        serves, recorded as the one kept active; "" when none serves."""
        served = await self._guard(
            run.id, "activate_reward_model", self._served(common_pb2.MODEL_KIND_REWARD)
        )
        if served is None:
            return ""
        version = str(served.ref.version)
        outcome = f"kept: {version} serves; {run.reward_version} was refused"
        await self._record(run.id, "activate_reward_model", version, outcome)
        return version

    async def _guard(self, run_id: str, step: str, work: Awaitable[T]) -> T:
        """Runs a step; a peer's error ends it recorded as failed, and the run FAILED."""
        try:
            return await work
        except grpc.aio.AioRpcError as err:
            reason = f"{err.code().name}: {err.details()}"
        except ClinAlignError as err:
            reason = err.message
        await self._record(run_id, step, "", f"failed: {reason}")
        raise StepFailed(f"{step}: {reason}")

    async def _run(self, run_id: str) -> RunView:
        run = await self.db.run_sync(lambda s: get_run(s, run_id))
        if run is None:
            raise StepFailed(f"run {run_id} vanished")
        return run

    async def _record(self, run_id: str, name: str, ref: str, outcome: str) -> None:
        await self.db.run_write(lambda s: record_step(s, run_id, name, ref, outcome))

    async def _job(self, run_id: str, step: str, spec: Any) -> str:
        """Submits a job (idempotent by its key), waits for it to end, records the step;
        the version it registered."""
        from clinalign.trainer.v1 import trainer_pb2 as tpb

        job = (await self._call(self.peers.trainer.SubmitJob, tpb.SubmitJobRequest(spec=spec))).job
        ended = (tpb.JOB_STATE_SUCCEEDED, tpb.JOB_STATE_FAILED, tpb.JOB_STATE_CANCELLED)
        while job.state not in ended:
            await asyncio.sleep(self.policy.poll_s)
            job = (await self._call(self.peers.trainer.GetJob, tpb.GetJobRequest(id=job.id))).job
        state = enum_name(tpb.JobState, job.state)
        if job.state != tpb.JOB_STATE_SUCCEEDED:
            why = f": {job.failure_reason}" if job.failure_reason else ""
            await self._record(run_id, step, job.id, f"{state}{why}")
            raise StepFailed(f"{step} {job.id} {state}{why}")
        await self._record(run_id, step, job.id, f"succeeded: registered {job.model_version}")
        return str(job.model_version)

    async def _gate(self, run: RunView, step: str, version: str) -> bool:
        """Whether the gate let ``version`` serve: from the recorded step, or asked now."""
        done = run.step(step)
        if done is not None:
            return done.outcome.startswith("promoted")
        return await self._promote(run.id, step, version)

    async def _promote(self, run_id: str, step: str, version: str) -> bool:
        """The gate on a version, read back from the registry when an earlier attempt
        decided already; records the step; whether it may be served."""
        from clinalign.trainer.v1 import trainer_pb2 as tpb

        known = await self._version(version)
        if known.stage == common_pb2.MODEL_STAGE_SERVING:
            promoted, outcome = True, f"promoted: {version} serves"
        elif known.stage == common_pb2.MODEL_STAGE_REJECTED:
            promoted, outcome = False, f"refused: {version} was rejected by the gate"
        else:
            reply = await self._call(
                self.peers.trainer.PromoteModel,
                tpb.PromoteModelRequest(version=version),
                deadline_s=GATE_TIMEOUT_S,
            )
            promoted = reply.promoted
            failed = [c for c in reply.checks if not c.passed]
            outcome = (
                f"promoted: {version} passed {len(reply.checks)} checks"
                if promoted
                else "refused: " + "; ".join(f"{c.name}: {c.message}" for c in failed)
            )
        await self._record(run_id, step, version, outcome)
        return bool(promoted)

    async def _activate(self, run_id: str, step: str, version: str, *, reward: bool) -> None:
        if reward:
            from clinalign.reward.v1 import reward_pb2

            await self._call(
                self.peers.reward.ActivateModel,
                reward_pb2.ActivateModelRequest(version=version),
                deadline_s=GATE_TIMEOUT_S,
            )
        else:
            from clinalign.generation.v1 import generation_pb2

            await self._call(
                self.peers.generation.ActivateModel,
                generation_pb2.ActivateModelRequest(version=version),
                deadline_s=GATE_TIMEOUT_S,
            )
        await self._record(run_id, step, version, f"serving {version}")

    async def _call(
        self, method: Callable[..., Awaitable[T]], request: Any, deadline_s: float = RPC_TIMEOUT_S
    ) -> T:
        """One peer call; UNAVAILABLE is retried a few times before it counts."""
        for attempt in range(RETRIES + 1):
            try:
                return await method(request, timeout=deadline_s)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                if attempt == RETRIES:
                    raise Unavailable(f"a peer service is unavailable: {err.details()}") from None
                await asyncio.sleep(self.policy.poll_s)
        raise AssertionError("unreachable")
