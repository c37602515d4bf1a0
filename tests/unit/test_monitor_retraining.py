"""The retraining policy's core: trigger maths and keys (pure), run bookkeeping on a real
store (SQLite and, when configured, PostgreSQL), and the run's step machine driven through
peers that are stand-ins (labelled as such below) so every branch is reached in
milliseconds. The same machine against the real services is tests/integration/
test_monitor_loop.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from clinalign.common.config import CommonSettings
from clinalign.common.db import Database
from clinalign.common.v1 import common_pb2
from clinalign.monitor import feedback, flags, retraining, store
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.retraining import Cut, Policy, Signals, Trigger, triggers
from clinalign.monitor.server import MIGRATIONS as MONITOR_MIGRATIONS
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.trainer.v1 import trainer_pb2 as tpb
from tests.conftest import reset_tables, serving

POLICY = Policy.from_settings(
    MonitorSettings(
        retrain_min_new_pairs=10,
        retrain_max_flag_rate=0.1,
        retrain_min_outputs=20,
        retrain_max_psi=0.25,
        retrain_poll_s=0.01,
    )
)


def _sig(**kw: Any) -> Signals:
    base: dict[str, Any] = {
        "snapshot_hash": "h1",
        "pairs": 0,
        "last_run_pairs": 0,
        "served_policy": "policy-v1",
        "outputs": 0,
        "confirmed_flags": 0,
        "psi": None,
    }
    base.update(kw)
    return Signals(**base)


# ----------------------------------------------------------------------------- pure maths


def test_new_preferences_fire_at_the_threshold_counted_from_the_last_run() -> None:
    assert triggers(_sig(pairs=9), POLICY) == []
    assert triggers(_sig(pairs=10), POLICY) == [
        Trigger("new_preferences", "new_preferences:10", "data:h1")
    ]
    # 240 pairs, 230 of them in the last run's snapshot: 10 new, exactly the threshold.
    assert [t.reason for t in triggers(_sig(pairs=240, last_run_pairs=230), POLICY)] == [
        "new_preferences:10"
    ]
    assert triggers(_sig(pairs=240, last_run_pairs=231), POLICY) == []


def test_flag_rate_needs_enough_outputs_and_must_exceed_the_bound() -> None:
    assert triggers(_sig(outputs=19, confirmed_flags=19), POLICY) == []  # too few outputs
    assert triggers(_sig(outputs=100, confirmed_flags=10), POLICY) == []  # 0.10 is not above
    fired = triggers(_sig(outputs=100, confirmed_flags=12), POLICY)
    assert fired == [Trigger("flag_rate", "flag_rate:0.12", "flag_rate:policy-v1:h1")]
    # no served policy, nothing to blame
    assert triggers(_sig(served_policy="", outputs=100, confirmed_flags=50), POLICY) == []


def test_drift_fires_above_the_psi_bound_and_all_triggers_keep_their_order() -> None:
    assert triggers(_sig(psi=0.25), POLICY) == []
    assert triggers(_sig(psi=None), POLICY) == []
    fired = triggers(
        _sig(pairs=240, outputs=100, confirmed_flags=12, psi=0.314, snapshot_hash="abc"), POLICY
    )
    assert [t.reason for t in fired] == ["new_preferences:240", "flag_rate:0.12", "drift_psi:0.31"]
    assert [t.key for t in fired] == [
        "data:abc",
        "flag_rate:policy-v1:abc",
        "drift_psi:policy-v1:abc",
    ]


def test_annotator_ids_are_kept_when_valid_and_mapped_deterministically_otherwise() -> None:
    assert feedback.annotator_id("local-clinician") == "local-clinician"
    mapped = feedback.annotator_id("Dr Jane Roe <jane@example.org>")
    assert mapped == feedback.annotator_id("Dr Jane Roe <jane@example.org>")
    assert mapped.startswith("clin-") and len(mapped) == 21 and "jane" not in mapped
    assert feedback.annotator_id("jane@example.org").startswith("clin-")  # never an e-mail
    assert feedback.annotator_id("ab").startswith("clin-")  # too short
    assert feedback.annotator_id("x" * 65).startswith("clin-")  # too long


# ----------------------------------------------------------------- the store's bookkeeping


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    reset_tables(database_url, store.Base)
    database = Database(database_url, store.Base, MONITOR_MIGRATIONS)
    database.create_schema()
    yield database
    database.dispose()


def _cut(digest: str = "h1", pairs: int = 12, at: datetime | None = None) -> Cut:
    return Cut(f"snap-{digest}", digest, pairs, at or datetime.now(UTC))


FIRED = [Trigger("new_preferences", "new_preferences:12", "data:h1")]


async def test_one_run_at_a_time_and_one_run_per_trigger_key(db: Database) -> None:
    first, created = await db.run_write(lambda s: retraining.start_run(s, FIRED, _cut(), "p1"))
    assert created and first.state == retraining.RUNNING
    assert [(s.name, s.ref) for s in first.steps] == [("snapshot", "snap-h1")]

    # While it runs, any trigger gets the running run back.
    other = [Trigger("drift_psi", "drift_psi:0.40", "drift_psi:p1:h2")]
    again, created = await db.run_write(lambda s: retraining.start_run(s, other, _cut("h2"), "p1"))
    assert not created and again.id == first.id

    await db.run_write(lambda s: retraining.finish(s, first.id, retraining.FAILED, "job failed"))
    # The same key once it ended: still no second run.
    same, created = await db.run_write(lambda s: retraining.start_run(s, FIRED, _cut(), "p1"))
    assert not created and same.id == first.id and same.state == retraining.FAILED
    # A new key starts a new run; its trigger lists only the unused keys' reasons.
    both = [*FIRED, *other]
    second, created = await db.run_write(lambda s: retraining.start_run(s, both, _cut("h2"), "p1"))
    assert created and second.id != first.id and second.trigger == "drift_psi:0.40"

    await db.run_write(lambda s: retraining.finish(s, second.id, retraining.REFUSED))
    runs = await db.run_sync(lambda s: retraining.list_runs(s, 10, 0))
    assert [r.id for r in runs] == [second.id, first.id]  # newest first
    assert [r.id for r in await db.run_sync(lambda s: retraining.list_runs(s, 1, 1))] == [first.id]


async def test_two_monitors_evaluating_at_once_start_one_run(
    db: Database, database_url: str
) -> None:
    # A second Database on the same URL: a second process, without the first's write lock.
    other = Database(database_url, store.Base, MONITOR_MIGRATIONS)
    try:
        results = await asyncio.gather(
            *(
                d.run_write(lambda s: retraining.start_run(s, FIRED, _cut(), "p1"), retries=3)
                for d in (db, other, db, other)
            )
        )
    finally:
        other.dispose()
    assert sum(created for _, created in results) == 1
    assert len({run.id for run, _ in results}) == 1
    assert len(await db.run_sync(lambda s: retraining.list_runs(s, 10, 0))) == 1


async def test_a_run_claims_the_flags_delivered_before_its_snapshot(db: Database) -> None:
    now = datetime.now(UTC)
    record = store.OutputRecord("o1", "p1", "", 0.1, 3, None, now, prompt="q", text="a")

    def setup(s: Any) -> list[str]:
        store.record_outputs(s, [record], lambda t: t, 200)
        ids = []
        for _ in range(3):
            new = flags.NewFlag("o1", 1, 3, "", "")
            row = flags.create(s, new, lambda t: t, "clin-1")
            flags.resolve(s, row.id, flags.CONFIRMED, "", lambda t: t, "clin-2")
            feedback.enqueue(s, row)
            ids.append(row.id)
        feedback.mark_delivered(s, ids[0], {"correction_id": "x1"})
        feedback.mark_delivered(s, ids[1], {"correction_id": "x2"})
        return ids

    ids = await db.run_write(setup)
    later = now + timedelta(hours=1)
    run, _ = await db.run_write(lambda s: retraining.start_run(s, FIRED, _cut(at=later), "p1"))
    claimed = await db.run_sync(
        lambda s: {i: (r.run_id if (r := feedback.get(s, i)) else None) for i in ids}
    )
    # delivered before the cut: in this run's snapshot; still pending: not
    assert claimed == {ids[0]: run.id, ids[1]: run.id, ids[2]: None}
    assert run.steps[0].outcome.startswith("12 pairs, 2 new flags")


# ----------------------------------------------- the step machine, through stand-in peers


@dataclass
class StandInTrainer:
    """Stand-in for TrainerService: jobs succeed at once; the gate says what it is told."""

    gate: dict[str, bool] = field(default_factory=dict)  # "reward" | "policy" -> promoted
    job_state: tpb.JobState.ValueType = tpb.JOB_STATE_SUCCEEDED
    failing: frozenset[str] = frozenset()  # kinds ("cost", ...) whose jobs fail
    calls: list[str] = field(default_factory=list)
    jobs: dict[str, tpb.Job] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)

    served_reward_parent: str | None = None  # a served reward model trained from this
    # versions GetModelVersion describes besides the jobs' own: version -> (kind, parent)
    lineage: dict[str, tuple[common_pb2.ModelKind.ValueType, str]] = field(default_factory=dict)

    async def ListModelVersions(self, req: Any, **_: Any) -> Any:
        if req.kind == common_pb2.MODEL_KIND_REWARD:
            if self.served_reward_parent is None:
                return tpb.ListModelVersionsResponse()
            reward = common_pb2.ModelVersion(
                ref=common_pb2.ModelRef(version="reward-v1"),
                kind=common_pb2.MODEL_KIND_REWARD,
                stage=common_pb2.MODEL_STAGE_SERVING,
                parent_version=self.served_reward_parent,
            )
            return tpb.ListModelVersionsResponse(versions=[reward])
        served = common_pb2.ModelVersion(
            ref=common_pb2.ModelRef(version="policy-v1"), stage=common_pb2.MODEL_STAGE_SERVING
        )
        return tpb.ListModelVersionsResponse(versions=[served])

    async def SubmitJob(self, req: tpb.SubmitJobRequest, **_: Any) -> Any:
        key = req.spec.idempotency_key
        self.calls.append(f"SubmitJob:{key.split(':')[-1]}")
        if key not in self.jobs:
            kind = {
                tpb.JOB_KIND_REWARD_MODEL: "reward",
                tpb.JOB_KIND_COST_MODEL: "cost",
            }.get(req.spec.kind, "policy")
            version = f"{kind}-v{len(self.jobs) + 2}"
            self.stages[version] = common_pb2.MODEL_STAGE_REGISTERED
            state = tpb.JOB_STATE_FAILED if kind in self.failing else self.job_state
            self.jobs[key] = tpb.Job(
                id=f"job-{len(self.jobs)}",
                spec=req.spec,
                state=state,
                model_version=version,
                failure_reason="out of memory" if state != 3 else "",
            )
        return tpb.SubmitJobResponse(job=self.jobs[key])

    async def GetJob(self, req: Any, **_: Any) -> Any:
        return tpb.GetJobResponse(job=next(j for j in self.jobs.values() if j.id == req.id))

    async def GetModelVersion(self, req: Any, **_: Any) -> Any:
        kind, parent = self.lineage.get(req.version, (common_pb2.MODEL_KIND_UNSPECIFIED, ""))
        version = common_pb2.ModelVersion(
            ref=common_pb2.ModelRef(version=req.version),
            kind=kind,
            parent_version=parent,
            stage=self.stages.get(req.version, common_pb2.MODEL_STAGE_REGISTERED),  # type: ignore[arg-type]
        )
        return tpb.GetModelVersionResponse(version=version)

    async def PromoteModel(self, req: Any, **_: Any) -> Any:
        self.calls.append(f"PromoteModel:{req.version}")
        ok = self.gate.get(req.version.split("-")[0], True)
        self.stages[req.version] = (
            common_pb2.MODEL_STAGE_SERVING if ok else common_pb2.MODEL_STAGE_REJECTED
        )
        check = tpb.GateCheck(name="win_rate_vs_served", passed=ok, message="win rate 0.4")
        return tpb.PromoteModelResponse(promoted=ok, checks=[check])


@dataclass
class StandInActivation:
    """Stand-in for the reward and generation services' ActivateModel."""

    activated: list[str] = field(default_factory=list)

    async def ActivateModel(self, req: Any, **_: Any) -> Any:
        self.activated.append(req.version)
        return None


@dataclass
class StandInPreference:
    """Stand-in for PreferenceService.CreateSnapshot: a fixed snapshot."""

    pairs: int = 12
    cuts: int = 0

    async def CreateSnapshot(self, req: Any, **_: Any) -> Any:
        self.cuts += 1
        # every annotator's label, so a majority outweighs a dissent
        assert not req.filter.deduplicate and req.filter.tie_handling == ppb.TIE_HANDLING_DROP
        snap = ppb.Snapshot(
            id="snap-h1", content_hash="h1", train_pairs=self.pairs - 2, eval_pairs=2
        )
        return ppb.CreateSnapshotResponse(snapshot=snap)


@dataclass
class StandIns:
    trainer: StandInTrainer = field(default_factory=StandInTrainer)
    preference: StandInPreference = field(default_factory=StandInPreference)
    reward: StandInActivation = field(default_factory=StandInActivation)
    generation: StandInActivation = field(default_factory=StandInActivation)


async def _ended(loop: retraining.Retraining, run_id: str) -> retraining.RunView:
    await asyncio.gather(*loop.tasks)
    run = await loop.db.run_sync(lambda s: retraining.get_run(s, run_id))
    assert run is not None
    return run


async def test_dry_run_reports_and_starts_nothing_then_a_run_promotes(db: Database) -> None:
    peers = StandIns()
    loop = retraining.Retraining(db, peers, POLICY)
    dry = await loop.evaluate(dry_run=True)
    assert dry.triggered and dry.reasons == ["new_preferences:12"] and dry.run is None
    assert await db.run_sync(lambda s: retraining.list_runs(s, 10, 0)) == []

    first, second = await asyncio.gather(loop.evaluate(False), loop.evaluate(False))
    assert first.run is not None and second.run is not None
    assert first.run.id == second.run.id
    run = await _ended(loop, first.run.id)
    assert run.state == retraining.PROMOTED and run.promoted_version == "policy-v3"
    assert [s.name for s in run.steps] == [
        "snapshot",
        "reward_model_job",
        "promote_reward_model",
        "activate_reward_model",
        "ppo_job",
        "promote_policy",
        "activate_policy",
    ]
    assert peers.reward.activated == ["reward-v2"] and peers.generation.activated == ["policy-v3"]
    ppo = peers.trainer.jobs[f"{run.id}:ppo_job"].spec
    assert ppo.base_model == "policy-v1" and ppo.reward_model_version == "reward-v2"
    # the same data once more: no new pairs since this run's snapshot, so no trigger
    third = await loop.evaluate(False)
    assert not third.triggered and third.run is None and not loop.tasks
    assert len(await db.run_sync(lambda s: retraining.list_runs(s, 10, 0))) == 1


@pytest.mark.parametrize("cost_promoted", [True, False])
async def test_a_run_with_a_cost_model_trains_gates_and_serves_it_before_ppo(
    db: Database, cost_promoted: bool
) -> None:
    """retrain_cost_model (issue 21): the run's snapshot trains a cost model from the
    served policy; a promoted one is activated in the reward service before PPO, a refused
    one leaves the served one, and the run goes on to PPO either way."""
    peers = StandIns()
    peers.trainer.gate = {"cost": cost_promoted}
    policy = replace(POLICY, cost_hyperparameters={"epochs": "2"})
    loop = retraining.Retraining(db, peers, policy)
    started = await loop.evaluate(False)
    assert started.run is not None
    run = await _ended(loop, started.run.id)
    names = [s.name for s in run.steps]
    assert (
        names[3:7]
        == [
            "activate_reward_model",
            "cost_model_job",
            "promote_cost_model",
            *(["activate_cost_model"] if cost_promoted else []),
            "ppo_job",
        ][:4]
    )
    cost = peers.trainer.jobs[f"{run.id}:cost_model_job"].spec
    assert cost.kind == tpb.JOB_KIND_COST_MODEL and cost.snapshot_id == "snap-h1"
    assert cost.base_model == "policy-v1" and dict(cost.hyperparameters) == {"epochs": "2"}
    assert run.state == retraining.PROMOTED
    if cost_promoted:
        assert peers.reward.activated == ["reward-v2", "cost-v3"] and run.reason == ""
    else:
        assert peers.reward.activated == ["reward-v2"]
        assert "the cost-model gate refused cost-v3" in run.reason
    # (without the setting a run has no cost step: the dry-run test lists its steps)


async def test_a_failed_cost_model_job_leaves_the_served_one_and_the_run_goes_on(
    db: Database,
) -> None:
    peers = StandIns()
    peers.trainer.failing = frozenset({"cost"})
    loop = retraining.Retraining(db, peers, replace(POLICY, cost_hyperparameters={}))
    started = await loop.evaluate(False)
    assert started.run is not None
    run = await _ended(loop, started.run.id)
    assert run.state == retraining.PROMOTED and run.promoted_version
    failed = run.step("cost_model_job")
    assert failed is not None and failed.outcome.startswith("failed: out of memory")
    assert "the served cost model stays" in run.reason
    assert run.step("promote_cost_model") is None and peers.reward.activated == ["reward-v2"]


REWARD = common_pb2.MODEL_KIND_REWARD
CONTINUED = {"reward-v0": (REWARD, "policy-sft")}  # the served reward-v1 continued reward-v0


@pytest.mark.parametrize(
    ("setting", "served_reward_parent", "lineage", "base"),
    [
        ("", "policy-sft", {}, ""),  # the default: the trainer takes the served policy
        (retraining.SERVED_REWARD_BASE, "policy-sft", {}, "policy-sft"),
        (retraining.SERVED_REWARD_BASE, None, {}, ""),  # no reward model served yet
        # back through a continued reward model to the policy the first was trained from
        (retraining.SERVED_REWARD_BASE, "reward-v0", CONTINUED, "policy-sft"),
        (retraining.SERVED_REWARD_BASE, "reward-v0", {"reward-v0": (REWARD, "")}, ""),
        (retraining.SERVED_REWARD, "policy-sft", {}, "reward-v1"),  # a warm start
        (retraining.SERVED_REWARD, "reward-v0", CONTINUED, "reward-v1"),
        (retraining.SERVED_REWARD, None, {}, ""),
        ("policy-v7", "policy-sft", {}, "policy-v7"),
    ],
)
async def test_the_reward_job_starts_from_the_configured_base(
    db: Database,
    setting: str,
    served_reward_parent: str | None,
    lineage: dict[str, tuple[common_pb2.ModelKind.ValueType, str]],
    base: str,
) -> None:
    trainer = StandInTrainer(served_reward_parent=served_reward_parent, lineage=lineage)
    peers = StandIns(trainer=trainer)
    loop = retraining.Retraining(db, peers, replace(POLICY, reward_base_model=setting))
    started = await loop.evaluate(False)
    assert started.run is not None
    run = await _ended(loop, started.run.id)
    assert run.state == retraining.PROMOTED
    assert peers.trainer.jobs[f"{run.id}:reward_model_job"].spec.base_model == base
    # PPO always continues from the served policy
    assert peers.trainer.jobs[f"{run.id}:ppo_job"].spec.base_model == "policy-v1"


@pytest.mark.parametrize(
    ("gate", "on_reward_refused", "activated_reward", "last_step"),
    [
        # no reward model serves to fall back on, whatever the setting
        ({"reward": False}, retraining.KEEP_SERVED_REWARD, [], "promote_reward_model"),
        ({"reward": False}, retraining.STOP, [], "promote_reward_model"),
        ({"policy": False}, retraining.KEEP_SERVED_REWARD, ["reward-v2"], "promote_policy"),
    ],
)
async def test_a_refusing_gate_ends_the_run_refused_and_activates_no_refused_version(
    db: Database,
    gate: dict[str, bool],
    on_reward_refused: str,
    activated_reward: list[str],
    last_step: str,
) -> None:
    peers = StandIns(trainer=StandInTrainer(gate=gate))
    loop = retraining.Retraining(db, peers, replace(POLICY, on_reward_refused=on_reward_refused))
    result = await loop.evaluate(False)
    assert result.run is not None
    run = await _ended(loop, result.run.id)
    assert run.state == retraining.REFUSED and run.promoted_version == ""
    assert run.steps[-1].name == last_step and run.steps[-1].outcome.startswith("refused:")
    assert "win rate 0.4" in run.steps[-1].outcome
    assert peers.reward.activated == activated_reward
    assert peers.generation.activated == []  # never a refused policy
    if last_step == "promote_reward_model":
        assert not any(c.endswith("ppo_job") for c in peers.trainer.calls)  # stopped before PPO


async def test_a_refused_reward_model_leaves_the_policy_to_train_against_the_served_one(
    db: Database,
) -> None:
    trainer = StandInTrainer(gate={"reward": False}, served_reward_parent="policy-sft")
    peers = StandIns(trainer=trainer)
    loop = retraining.Retraining(db, peers, POLICY)  # the default: keep the served one
    result = await loop.evaluate(False)
    assert result.run is not None
    run = await _ended(loop, result.run.id)
    assert run.state == retraining.PROMOTED and run.promoted_version == "policy-v3"
    steps = {s.name: (s.ref, s.outcome) for s in run.steps}
    assert steps["promote_reward_model"][1].startswith("refused:")
    assert steps["activate_reward_model"] == (
        "reward-v1",
        "kept: reward-v1 serves; reward-v2 was refused",
    )
    ppo = peers.trainer.jobs[f"{run.id}:ppo_job"].spec
    assert ppo.reward_model_version == "reward-v1" and ppo.base_model == "policy-v1"
    assert ppo.snapshot_id == run.snapshot_id == "snap-h1"  # the flagged prompts shape it
    assert peers.reward.activated == []  # the refused reward model never serves
    assert peers.generation.activated == ["policy-v3"]
    assert run.reason == (
        "the reward-model gate refused reward-v2; the policy trained against the served reward-v1"
    )


async def _crash_after_the_reward_steps(
    db: Database, run_id: str, job_id: str, gate: str, active: str
) -> None:
    """Records what a monitor that died after the reward-model steps had recorded: the job
    (which registered reward-v2), the gate's outcome, and the reward model left active."""

    def crashed(s: Any) -> None:
        retraining.record_step(s, run_id, "reward_model_job", job_id, "succeeded")
        retraining.set_versions(s, run_id, reward_version="reward-v2")
        retraining.record_step(s, run_id, "promote_reward_model", "reward-v2", gate)
        retraining.record_step(s, run_id, "activate_reward_model", active, f"active: {active}")

    await db.run_write(crashed)


async def test_a_resumed_run_trains_against_the_reward_model_it_recorded_keeping(
    db: Database,
) -> None:
    trainer = StandInTrainer(served_reward_parent="policy-sft")  # reward-v1 serves now
    peers = StandIns(trainer=trainer)
    loop = retraining.Retraining(db, peers, POLICY)
    run, _ = await db.run_write(lambda s: retraining.start_run(s, FIRED, _cut(), "policy-v1"))

    # the monitor died after keeping reward-v0
    await _crash_after_the_reward_steps(db, run.id, "job-x", "refused: low", "reward-v0")
    assert await loop.resume() == [run.id]
    ended = await _ended(loop, run.id)
    assert ended.state == retraining.PROMOTED
    assert peers.trainer.calls == ["SubmitJob:ppo_job", "PromoteModel:policy-v2"]
    assert peers.trainer.jobs[f"{run.id}:ppo_job"].spec.reward_model_version == "reward-v0"
    assert [s.name for s in ended.steps].count("activate_reward_model") == 1


@pytest.mark.parametrize(
    ("prompt_set", "spec_prompt_set", "spec_snapshot"),
    [
        (retraining.RUN_SNAPSHOT, "", "snap-h1"),  # the default: the run's own snapshot
        ("clinical-train", "clinical-train", ""),
    ],
)
async def test_the_ppo_job_samples_the_configured_prompts(
    db: Database, prompt_set: str, spec_prompt_set: str, spec_snapshot: str
) -> None:
    peers = StandIns()
    loop = retraining.Retraining(db, peers, replace(POLICY, prompt_set=prompt_set))
    result = await loop.evaluate(False)
    assert result.run is not None
    run = await _ended(loop, result.run.id)
    assert run.state == retraining.PROMOTED
    spec = peers.trainer.jobs[f"{run.id}:ppo_job"].spec
    assert (spec.prompt_set, spec.snapshot_id) == (spec_prompt_set, spec_snapshot)
    assert peers.trainer.jobs[f"{run.id}:reward_model_job"].spec.snapshot_id == "snap-h1"


async def test_stop_ends_the_run_at_a_refused_reward_model_though_one_serves(
    db: Database,
) -> None:
    trainer = StandInTrainer(gate={"reward": False}, served_reward_parent="policy-sft")
    peers = StandIns(trainer=trainer)
    loop = retraining.Retraining(db, peers, replace(POLICY, on_reward_refused=retraining.STOP))
    result = await loop.evaluate(False)
    assert result.run is not None
    run = await _ended(loop, result.run.id)
    assert run.state == retraining.REFUSED
    assert run.reason == "the reward-model gate refused reward-v2"
    assert run.steps[-1].name == "promote_reward_model"
    assert not any(c.endswith("ppo_job") for c in peers.trainer.calls)


async def test_a_failed_job_fails_the_run_with_its_reason(db: Database) -> None:
    peers = StandIns(trainer=StandInTrainer(job_state=tpb.JOB_STATE_FAILED))
    loop = retraining.Retraining(db, peers, POLICY)
    result = await loop.evaluate(False)
    assert result.run is not None
    run = await _ended(loop, result.run.id)
    assert run.state == retraining.FAILED
    assert run.reason == "reward_model_job job-0 failed: out of memory"
    assert run.steps[-1].name == "reward_model_job" and peers.reward.activated == []


class RefusingTrainer(StandInTrainer):
    """Stand-in for a trainer that rejects the job spec."""

    async def SubmitJob(self, req: tpb.SubmitJobRequest, **_: Any) -> Any:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            "spec.base_model: is required while no policy is served",
        )


async def test_a_step_a_peer_rejects_is_recorded_failed_and_fails_the_run(db: Database) -> None:
    peers = StandIns(trainer=RefusingTrainer())
    loop = retraining.Retraining(db, peers, POLICY)
    result = await loop.evaluate(False)
    assert result.run is not None
    run = await _ended(loop, result.run.id)
    assert run.state == retraining.FAILED
    assert run.reason == (
        "reward_model_job: INVALID_ARGUMENT: spec.base_model: is required while no policy is served"
    )
    assert run.steps[-1].name == "reward_model_job"
    assert run.steps[-1].outcome.startswith("failed: INVALID_ARGUMENT")


async def test_a_restarted_monitor_resumes_a_run_after_its_last_recorded_step(
    db: Database,
) -> None:
    peers = StandIns()
    loop = retraining.Retraining(db, peers, POLICY)
    run, _ = await db.run_write(lambda s: retraining.start_run(s, FIRED, _cut(), "policy-v1"))
    # As if the monitor died once the reward model was active: its job, gate and
    # activation are recorded, and the trainer knows the job by its key.
    job = await peers.trainer.SubmitJob(
        tpb.SubmitJobRequest(
            spec=tpb.JobSpec(
                kind=tpb.JOB_KIND_REWARD_MODEL, idempotency_key=f"{run.id}:reward_model_job"
            )
        )
    )
    peers.trainer.calls.clear()

    await _crash_after_the_reward_steps(db, run.id, job.job.id, "promoted: ok", "reward-v2")
    assert await loop.resume() == [run.id]
    ended = await _ended(loop, run.id)
    assert ended.state == retraining.PROMOTED
    assert peers.trainer.calls == ["SubmitJob:ppo_job", "PromoteModel:policy-v3"]
    assert peers.reward.activated == []  # not activated twice
    assert [s.name for s in ended.steps].count("activate_reward_model") == 1


def test_settings_parse_hyperparameters_from_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from clinalign.monitor.config import MonitorSettings

    monkeypatch.setenv("CLINALIGN_MONITOR_RETRAIN_PPO_HYPERPARAMETERS", '{"iterations": "4"}')
    monkeypatch.setenv("CLINALIGN_MONITOR_RETRAIN_MIN_NEW_PAIRS", "240")
    policy = Policy.from_settings(MonitorSettings())
    assert policy.ppo_hyperparameters == {"iterations": "4"} and policy.min_new_pairs == 240
    assert policy.reward_hyperparameters == {}


# ------------------------------------------------------ the server's tasks, with stand-ins


async def test_the_server_resumes_running_runs_and_evaluates_on_its_interval(
    common: CommonSettings, tmp_path: Path
) -> None:
    from prometheus_client import REGISTRY

    from clinalign.monitor.config import MonitorSettings
    from clinalign.monitor.server import MonitorApp

    def promoted_total() -> float:
        value = REGISTRY.get_sample_value(
            "clinalign_monitor_retraining_runs_total", {"state": "promoted"}
        )
        return value or 0.0

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    # 1. A run a restart interrupted after its snapshot: the new process carries it on.
    plain = {"redact": lambda t: t}  # the real redactor loads in seconds; no text here
    app = MonitorApp(
        common, MonitorSettings(port=0, database_url=url, retrain_poll_s=0.01), **plain
    )
    app.db.create_schema()
    interrupted, _ = await app.db.run_write(
        lambda s: retraining.start_run(s, FIRED, _cut(), "policy-v1")
    )
    app.retraining.peers = StandIns()
    before = promoted_total()
    async with serving(app, common):
        resumed = await _ended(app.retraining, interrupted.id)
    assert resumed.state == retraining.PROMOTED
    assert promoted_total() == before + 1

    # 2. With an interval, the server evaluates by itself: new data starts a run.
    periodic = MonitorApp(
        common,
        MonitorSettings(
            port=0,
            database_url=f"sqlite:///{tmp_path / 'periodic.db'}",
            retrain_interval_s=0.05,
            retrain_min_new_pairs=10,
            retrain_poll_s=0.01,
        ),
        **plain,
    )
    peers = StandIns()
    periodic.retraining.peers = peers
    async with serving(periodic, common):
        for _ in range(200):
            runs = await periodic.db.run_sync(lambda s: retraining.list_runs(s, 10, 0))
            if runs and runs[0].state != retraining.RUNNING:
                break
            await asyncio.sleep(0.02)
        cuts = peers.preference.cuts
        for _ in range(1000):  # two more evaluation rounds on the same data
            if peers.preference.cuts >= cuts + 2:
                break
            await asyncio.sleep(0.005)
        runs = await periodic.db.run_sync(lambda s: retraining.list_runs(s, 10, 0))
    assert [r.state for r in runs] == [retraining.PROMOTED]
    assert runs[0].trigger == "new_preferences:12" and peers.preference.cuts >= cuts + 2


# ------------------------------------------------------------- lineage, with stand-ins


@dataclass
class StandInRegistry:
    """Stand-in for the trainer's GetModelVersion/GetJob: versions by name, no jobs."""

    parents: dict[str, str]

    async def GetModelVersion(self, req: Any, **_: Any) -> Any:
        if req.version not in self.parents:
            raise _NotFound()
        return tpb.GetModelVersionResponse(
            version=common_pb2.ModelVersion(
                ref=common_pb2.ModelRef(version=req.version),
                kind=common_pb2.MODEL_KIND_POLICY,
                parent_version=self.parents[req.version],
            )
        )


class _NotFound(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "not found"
        )


async def test_lineage_ends_a_branch_at_an_unknown_version_and_survives_a_loop(
    db: Database,
) -> None:
    from clinalign.common.errors import NotFound
    from clinalign.monitor import lineage

    now = datetime.now(UTC)
    records = [
        store.OutputRecord("o-ghost", "policy-v9", "", 0.1, 3, None, now, "q", "a"),
        store.OutputRecord("o-loop", "policy-a", "", 0.1, 3, None, now, "q", "a"),
    ]
    await db.run_write(lambda s: store.record_outputs(s, records, lambda t: t, 200))
    registry = StandInRegistry({"policy-a": "policy-b", "policy-b": "policy-a"})

    ghost, model = await lineage.walk(db, registry, None, "o-ghost")
    assert model is None
    assert [(s.kind, s.id, s.summary, s.parent_id) for s in ghost] == [
        ("output", "o-ghost", ghost[0].summary, ""),
        ("model_version", "policy-v9", "not in the model registry", "o-ghost"),
    ]
    assert ghost[0].summary.startswith("written by policy-v9 at ")

    looped, model = await lineage.walk(db, registry, None, "o-loop")
    assert model.ref.version == "policy-a"
    assert [(s.id, s.parent_id) for s in looped] == [
        ("o-loop", ""),
        ("policy-a", "o-loop"),
        ("policy-b", "policy-a"),
    ]
    with pytest.raises(NotFound, match="output_id: output 'nope' not found"):
        await lineage.walk(db, registry, None, "nope")


# ------------------------------------------------------------ feedback, with stand-ins


@dataclass
class StandInPreferenceIngest:
    """Stand-in for the preference store's ingest RPCs: counts calls, never fails."""

    calls: list[str] = field(default_factory=list)

    async def SubmitPrompts(self, req: Any, **_: Any) -> Any:
        self.calls.append("SubmitPrompts")
        return ppb.SubmitPromptsResponse(ids=["p1"])


async def test_feedback_of_an_erased_or_empty_output_fails_once_and_is_not_retried(
    db: Database,
) -> None:
    now = datetime.now(UTC)
    records = [
        store.OutputRecord("o-empty", "v1", "", 0.1, 0, None, now, "q", "   "),
        store.OutputRecord("o-old", "v1", "", 0.1, 3, None, now, "q", "a"),
    ]

    def setup(s: Any) -> list[str]:
        store.record_outputs(s, records, lambda t: t, 200)
        s.get(store.OutputRow, "o-old").text = None  # as retention erases a baseline's
        ids = []
        for oid in ("o-empty", "o-old"):
            row = flags.create(s, flags.NewFlag(oid, 1, 3, "", "fixed"), lambda t: t, "clin")
            flags.resolve(s, row.id, flags.CONFIRMED, "", lambda t: t, "clin")
            feedback.enqueue(s, row)
            ids.append(row.id)
        return ids

    ids = await db.run_write(setup)
    preference = StandInPreferenceIngest()
    peers = StandIns(preference=preference)  # type: ignore[arg-type]
    delivery = feedback.Delivery(
        db, peers, feedback.Settings.from_settings(MonitorSettings(feedback_max_attempts=5))
    )
    assert await delivery.deliver_due() == (0, 2)
    assert await delivery.deliver_due() == (0, 0)  # final: not tried again
    rows = await db.run_sync(lambda s: [feedback.get(s, i) for i in ids])
    assert preference.calls == []
    assert [(r.state, r.attempts) for r in rows if r] == [("failed", 5), ("failed", 5)]
    assert "empty" in rows[0].reason and "erased by retention" in rows[1].reason  # type: ignore[union-attr]
