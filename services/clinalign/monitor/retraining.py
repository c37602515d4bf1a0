"""The retraining policy that closes the loop: when to retrain, and the run that does it.

Triggers (``triggers``, pure), evaluated by EvaluateRetraining and, when
``retrain_interval_s`` > 0, by the monitor server on that period:

- ``new_preferences:<n>``: a snapshot cut now (preference CreateSnapshot with
  ``retrain_min_agreement``, every annotator's label, ties dropped) holds at least
  ``retrain_min_new_pairs`` pairs (train + eval; ``retrain_eval_fraction`` of the prompts
  held out for the reward-model gate) more than the last run's snapshot (all of
  them when there was no run). Key: ``data:<content hash>``.
- ``flag_rate:<rate>``: confirmed flags per output of the served policy version over the
  trailing ``retrain_window_minutes`` exceed ``retrain_max_flag_rate``, over at least
  ``retrain_min_outputs`` outputs. Key: ``flag_rate:<served version>:<content hash>``.
- ``drift_psi:<psi>``: the PSI of that window's reward scores against the version's
  baseline exceeds ``retrain_max_psi``. Key: ``drift_psi:<served version>:<content hash>``.

A dry run cuts the snapshot too: the store has no way to count a snapshot's pairs without
cutting it, and cutting is idempotent by content (the same data gives back the same
snapshot), so a dry run changes nothing a later decision reads; it records no run, no
trigger key and no flag inclusion.

Idempotency, held by the database rather than a lock in one process: at most one run is
RUNNING (a unique column set only while running), and each trigger key starts at most one
run (the key is a primary key). A call that finds a RUNNING run returns it (a dry run or a
call on which nothing fires too, so a caller racing the one that started a run sees it); a
call whose fired keys all started runs already returns the run of the first one. Two
monitors evaluating at once: one insert wins, the other's transaction retries and finds it.

A run's steps, each recorded once when it ends (``retraining_run_steps``, unique per run
and name) with what it produced and its outcome:

``snapshot`` → ``reward_model_job`` (trainer SubmitJob, kind reward_model, on the snapshot,
from ``retrain_reward_base_model``: the served policy, the policy the served reward model
was first trained from (``served-reward-base``), the served reward model itself, trained
further (``served-reward``: a warm start), or a named version or directory; idempotency key
``<run>:reward_model_job``; recorded when the job ends) →
``promote_reward_model`` (trainer PromoteModel: the reward-model gate) →
``activate_reward_model`` (RewardService.ActivateModel: PPO jobs score through the reward
service, which must serve the version they name) → ``ppo_job`` (kind ppo from the served
policy, against the new reward model, on ``retrain_prompt_set``: by default the run's
snapshot, so the policy practises on the prompts clinicians flagged) → ``promote_policy`` (the
policy gate) → ``activate_policy`` (GenerationService.ActivateModel).

A refused reward model is never activated. What the run does next is
``retrain_on_reward_refused``: ``served`` (the default) records ``activate_reward_model``
as keeping the reward model that serves, and the PPO job trains against that one (the new
data did not make a better judge, which need not hold back the policy's retraining; the
policy gate still decides); ``stop`` ends the run REFUSED before PPO, as does a refusal
while no reward model serves. A refused policy is never activated and ends the run REFUSED
(the generation service keeps serving what it served; a new reward model that passed its
own gate stays active). A job that fails or is cancelled, or a call that keeps failing,
ends it FAILED with the reason. Every step is idempotent (job keys, promotion read back
from the registry's stage, activation of the active version is a no-op), so after a
monitor restart ``resume`` carries each RUNNING run on from its last recorded step.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import grpc.aio
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from clinalign.common.db import Database
from clinalign.common.errors import ClinAlignError, FailedPrecondition, Unavailable
from clinalign.common.v1 import common_pb2
from clinalign.monitor import metrics, store
from clinalign.monitor.feedback import DELIVERED
from clinalign.monitor.store import FeedbackRow, RunRow, RunStepRow, RunTriggerRow
from clinalign.monitor.v1 import monitor_pb2 as pb

log = logging.getLogger("clinalign.monitor.retraining")
T = TypeVar("T")

RUNNING = pb.RUN_STATE_RUNNING
PROMOTED = pb.RUN_STATE_PROMOTED
REFUSED = pb.RUN_STATE_REFUSED
FAILED = pb.RUN_STATE_FAILED
STATE_NAMES: dict[int, str] = {
    RUNNING: "running",
    PROMOTED: "promoted",
    REFUSED: "refused",
    FAILED: "failed",
}
RPC_TIMEOUT_S = 120.0
# A gate decision runs the candidate over held-out prompts: give it room.
GATE_TIMEOUT_S = 1800.0
RETRIES = 3  # UNAVAILABLE from a peer is retried this many times, retrain_poll_s apart


# `reward_base_model` values. SERVED_REWARD_BASE: train the new reward model from the policy
# the served reward model was first trained from, so that the gate, which compares the two
# on the same held-out pairs, compares models that differ only in their data.
# SERVED_REWARD: continue training the served reward model on the new snapshot (a warm
# start): the new model starts where the served one is, and the new data moves it.
SERVED_REWARD_BASE = "served-reward-base"
SERVED_REWARD = "served-reward"
# What a run does when the reward-model gate refuses its reward model:
KEEP_SERVED_REWARD = "served"  # train the policy against the reward model that serves
STOP = "stop"  # end the run REFUSED before PPO
# ``retrain_prompt_set`` naming the run's own snapshot: PPO samples the prompts of its train
# split, the prompts of the flagged outputs among them
RUN_SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class Policy:
    """The retraining settings (``MonitorSettings.retrain_*``), parsed once."""

    min_new_pairs: int = 200
    max_flag_rate: float = 0.05
    min_outputs: int = 100
    max_psi: float = 0.25
    window_minutes: float = 1440.0
    min_agreement: float = 0.0
    eval_fraction: float = 0.1
    psi_bins: int = 10
    poll_s: float = 5.0
    reward_base_model: str = ""  # "" the served policy; SERVED_REWARD_BASE; a version or path
    reward_hyperparameters: dict[str, str] = field(default_factory=dict)
    ppo_hyperparameters: dict[str, str] = field(default_factory=dict)
    prompt_set: str = RUN_SNAPSHOT  # or a named prompt set
    seed: int = 0
    on_reward_refused: str = KEEP_SERVED_REWARD  # or STOP


@dataclass(frozen=True)
class Signals:
    """What the triggers read: the fresh snapshot, the last run's, the served policy's
    window."""

    snapshot_hash: str
    pairs: int
    last_run_pairs: int
    served_policy: str
    outputs: int
    confirmed_flags: int
    psi: float | None


@dataclass(frozen=True)
class Trigger:
    kind: str  # new_preferences | flag_rate | drift_psi
    reason: str
    key: str


def triggers(sig: Signals, policy: Policy) -> list[Trigger]:
    """The triggers that fire, in a fixed order (data, flag rate, drift)."""
    fired = []
    new = sig.pairs - sig.last_run_pairs
    if new >= policy.min_new_pairs:
        fired.append(
            Trigger("new_preferences", f"new_preferences:{new}", f"data:{sig.snapshot_hash}")
        )
    if sig.served_policy and sig.outputs >= policy.min_outputs:
        rate = sig.confirmed_flags / sig.outputs
        if rate > policy.max_flag_rate:
            fired.append(
                Trigger(
                    "flag_rate",
                    f"flag_rate:{rate:.2f}",
                    f"flag_rate:{sig.served_policy}:{sig.snapshot_hash}",
                )
            )
    if sig.served_policy and sig.psi is not None and sig.psi > policy.max_psi:
        fired.append(
            Trigger(
                "drift_psi",
                f"drift_psi:{sig.psi:.2f}",
                f"drift_psi:{sig.served_policy}:{sig.snapshot_hash}",
            )
        )
    return fired


# ------------------------------------------------------------------------------ the store


@dataclass(frozen=True)
class StepView:
    name: str
    ref: str
    outcome: str
    at: datetime


@dataclass(frozen=True)
class RunView:
    id: str
    trigger: str
    state: int
    steps: list[StepView]
    promoted_version: str
    created_at: datetime
    snapshot_id: str = ""
    snapshot_hash: str = ""
    served_policy: str = ""
    reward_version: str = ""
    policy_version: str = ""
    reason: str = ""

    def step(self, name: str) -> StepView | None:
        return next((s for s in self.steps if s.name == name), None)


def window_signals(
    session: Session, version: str, start: datetime, end: datetime, bins: int
) -> tuple[int, int, float | None]:
    """(outputs, confirmed flags, reward PSI) of a version over [start, end)."""
    from clinalign.monitor.flags import CONFIRMED

    for v in store.window_stats(session, version, start, end, CONFIRMED):
        if v.model_version == version:
            psi, _ = v.drift(bins)
            return v.outputs, sum(v.confirmed_by_category.values()), psi
    return 0, 0, None


def last_run_pairs(session: Session) -> int:
    row = session.scalar(select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id.desc()))
    return row.pairs if row else 0


def view(session: Session, run: RunRow) -> RunView:
    steps = session.scalars(
        select(RunStepRow).where(RunStepRow.run_id == run.id).order_by(RunStepRow.seq)
    )
    return RunView(
        id=run.id,
        trigger=run.trigger,
        state=run.state,
        steps=[StepView(s.name, s.ref, s.outcome, store.utc(s.at)) for s in steps],
        promoted_version=run.promoted_version,
        created_at=store.utc(run.created_at),
        snapshot_id=run.snapshot_id,
        snapshot_hash=run.snapshot_hash,
        served_policy=run.served_policy,
        reward_version=run.reward_version,
        policy_version=run.policy_version,
        reason=run.reason,
    )


def get_run(session: Session, run_id: str) -> RunView | None:
    row = session.get(RunRow, run_id)
    return view(session, row) if row else None


def running_run(session: Session) -> RunView | None:
    row = session.scalar(select(RunRow).where(RunRow.state == RUNNING))
    return view(session, row) if row else None


def list_runs(session: Session, limit: int, offset: int) -> list[RunView]:
    rows = session.scalars(
        select(RunRow)
        .order_by(RunRow.created_at.desc(), RunRow.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [view(session, r) for r in rows]


@dataclass(frozen=True)
class Cut:
    """The snapshot an evaluation cut, and when (flags delivered before it are in it)."""

    snapshot_id: str
    snapshot_hash: str
    pairs: int
    at: datetime


def start_run(
    session: Session, fired: list[Trigger], cut: Cut, served_policy: str
) -> tuple[RunView, bool]:
    """(the run, whether it is new): the RUNNING run if there is one; else the run of the
    first fired key when every fired key started one; else a new RUNNING run holding the
    unused keys, with its snapshot step and the delivered flags its snapshot includes."""
    running = running_run(session)
    if running is not None:
        return running, False
    keys = [t.key for t in fired]
    used = dict(
        session.execute(
            select(RunTriggerRow.key, RunTriggerRow.run_id).where(RunTriggerRow.key.in_(keys))
        ).all()
    )
    fresh = [t for t in fired if t.key not in used]
    if not fresh:
        found = get_run(session, used[keys[0]])
        assert found is not None
        return found, False
    now = datetime.now(UTC)
    run = RunRow(
        id=f"run_{uuid.uuid4().hex}",
        trigger=", ".join(t.reason for t in fresh),
        state=RUNNING,
        running="1",
        snapshot_id=cut.snapshot_id,
        snapshot_hash=cut.snapshot_hash,
        pairs=cut.pairs,
        served_policy=served_policy,
        created_at=now,
    )
    session.add(run)
    session.flush()  # a second RUNNING run fails here, and run_write retries
    session.add_all(RunTriggerRow(key=t.key, run_id=run.id) for t in fresh)
    included = session.execute(
        update(FeedbackRow)
        .where(
            FeedbackRow.state == DELIVERED,
            FeedbackRow.run_id.is_(None),
            FeedbackRow.delivered_at <= cut.at,
        )
        .values(run_id=run.id)
        .execution_options(synchronize_session=False)
    )
    flags = int(getattr(included, "rowcount", 0) or 0)
    record_step(
        session,
        run.id,
        "snapshot",
        cut.snapshot_id,
        f"{cut.pairs} pairs, {flags} new flags, hash {cut.snapshot_hash[:16]}",
    )
    session.flush()
    return view(session, run), True


def record_step(session: Session, run_id: str, name: str, ref: str, outcome: str) -> None:
    """Records a finished step once; a step already recorded is left as it is."""
    exists = session.scalar(
        select(RunStepRow.id).where(RunStepRow.run_id == run_id, RunStepRow.name == name)
    )
    if exists is not None:
        return
    seq = session.scalar(select(func.count()).where(RunStepRow.run_id == run_id)) or 0
    session.add(
        RunStepRow(
            run_id=run_id,
            seq=seq + 1,
            name=name,
            ref=ref[:128],
            outcome=outcome[:2000],
            at=datetime.now(UTC),
        )
    )
    session.flush()


def set_versions(session: Session, run_id: str, **versions: str) -> None:
    row = session.get(RunRow, run_id)
    if row is not None:
        for name, value in versions.items():
            setattr(row, name, value)


def finish(session: Session, run_id: str, state: int, reason: str = "", promoted: str = "") -> bool:
    """Ends a RUNNING run; False if it had ended already."""
    row = session.get(RunRow, run_id)
    if row is None or row.state != RUNNING:
        return False
    row.state, row.running, row.reason = state, None, reason[:2000]
    row.promoted_version = promoted
    row.ended_at = datetime.now(UTC)
    return True


# ------------------------------------------------------------------------ the run itself


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

    def __init__(self, db: Database, peers: Any, policy: Policy) -> None:
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
        state = tpb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
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
