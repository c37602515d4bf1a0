"""PromoteModel and RollbackModel through real gRPC: a reward model trained on a snapshot
of a real preference service passes the gate and serves; an untrained one is refused with
the failed figure named and marked REJECTED; rollback walks back through the serving
history; every decision lands in the audit trail. The registry's decision and rollback
bookkeeping runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from clinalign.common import artefacts
from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition
from clinalign.common.v1 import common_pb2
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2_grpc
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.methods.reward_model.training import (
    RewardHyperparameters,
    train_reward_model,
)
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.server import MIGRATIONS as TRAINER_MIGRATIONS
from clinalign.trainer.server import TrainerApp, snapshot_fetcher
from clinalign.trainer.v1 import trainer_pb2 as tpb
from clinalign.trainer.v1 import trainer_pb2_grpc
from tests.conftest import client, reset_tables, rpc_fails, serving
from tests.e2e.test_reward_pipeline import _populate

Token = Callable[[Role], str]
REWARD = common_pb2.MODEL_KIND_REWARD
# A learning rate for the 48-wide tiny model and a short normalisation sample, so the
# reward model trains in seconds (as in test_trainer_jobs).
HYPER = RewardHyperparameters(
    epochs=2.0, learning_rate=1e-3, batch_size=8, norm_prompts=4, norm_max_new_tokens=8
)


def _register(path: Path, kind: int = REWARD) -> tpb.RegisterModelRequest:
    return tpb.RegisterModelRequest(path=str(path), kind=kind)  # type: ignore[arg-type]


def _promote(version: str) -> tpb.PromoteModelRequest:
    return tpb.PromoteModelRequest(version=version)


@pytest.mark.slow
async def test_promotion_gate_and_rollback_through_grpc(
    common: CommonSettings,
    token: Token,
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_reward_dir: Path,
) -> None:
    preference = PreferenceApp(common, PreferenceSettings(port=0))
    async with serving(preference, common) as pref:
        async with client(pref, common, token(Role.ADMIN)) as ch:
            snapshot_id = await _populate(preference_pb2_grpc.PreferenceServiceStub(ch), 24)
        wired = common.model_copy(update={"preference_target": f"127.0.0.1:{pref.port}"})
        # Trained in-process on the records the gate itself fetches: its manifest records
        # the snapshot's content hash, which the gate evaluates it on.
        records, snapshot_hash = await snapshot_fetcher(wired)(snapshot_id)
        trained = tmp_path / "trained"
        await asyncio.to_thread(
            train_reward_model, records, snapshot_hash, tiny_model_dir, trained, HYPER
        )
        trainer = TrainerApp(wired, TrainerSettings(port=0))
        async with serving(trainer, wired) as running:
            async with client(running, wired, token(Role.ML_ENGINEER)) as ch:
                stub = trainer_pb2_grpc.TrainerServiceStub(ch)
                no_served = await rpc_fails(
                    stub.RollbackModel(tpb.RollbackModelRequest(kind=REWARD))
                )
                no_version = await rpc_fails(stub.PromoteModel(_promote("")))
                unknown = await rpc_fails(stub.PromoteModel(_promote("reward-v9")))
                untrained = (await stub.RegisterModel(_register(tiny_reward_dir))).version
                no_snapshot = await rpc_fails(stub.PromoteModel(_promote(untrained.ref.version)))

                good = (await stub.RegisterModel(_register(trained))).version
                passed = await stub.PromoteModel(_promote(good.ref.version))
                again = await rpc_fails(stub.PromoteModel(_promote(good.ref.version)))
                first_only = await rpc_fails(
                    stub.RollbackModel(tpb.RollbackModelRequest(kind=REWARD))
                )
                # No lineage of its own: judged on the served model's snapshot, against it.
                refused = await stub.PromoteModel(_promote(untrained.ref.version))

                # The same weights once more: no difference pair by pair, so it serves.
                same = (await stub.RegisterModel(_register(trained))).version
                replaced = await stub.PromoteModel(_promote(same.ref.version))
                rolled = (await stub.RollbackModel(tpb.RollbackModelRequest(kind=REWARD))).version
                after = await stub.ListModelVersions(tpb.ListModelVersionsRequest(kind=REWARD))
                exhausted = await rpc_fails(
                    stub.RollbackModel(tpb.RollbackModelRequest(kind=REWARD))
                )
                bad_kind = await rpc_fails(stub.RollbackModel(tpb.RollbackModelRequest()))

                policy = (
                    await stub.RegisterModel(
                        _register(tiny_model_dir, common_pb2.MODEL_KIND_POLICY)
                    )
                ).version
                policy_gate = await rpc_fails(stub.PromoteModel(_promote(policy.ref.version)))
                # Lineage naming a snapshot the preference service does not hold.
                lost = tmp_path / "lost"
                shutil.copytree(tiny_reward_dir, lost)
                (lost / artefacts.MANIFEST_NAME).write_text(json.dumps({"snapshot_hash": "f" * 64}))
                orphan = (await stub.RegisterModel(_register(lost))).version
                no_store = await rpc_fails(stub.PromoteModel(_promote(orphan.ref.version)))
            async with client(running, wired, token(Role.CLINICIAN)) as ch:
                denied = await rpc_fails(
                    trainer_pb2_grpc.TrainerServiceStub(ch).PromoteModel(_promote("reward-v1"))
                )
            decisions = await trainer.db.run_sync(lambda s: trainer.registry.decisions(s))
            events = await trainer.db.run_sync(
                lambda s: [
                    (e.action, e.version)
                    for e in s.scalars(
                        select(registry.ServingEventRow).order_by(registry.ServingEventRow.id)
                    )
                ]
            )

    assert no_served.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert no_served.details() == "no reward version is served, so there is nothing to roll back"
    assert no_version.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (no_version.details() or "").startswith("version: is required")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert no_snapshot.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "records no preference snapshot" in (no_snapshot.details() or "")

    assert (untrained.ref.version, good.ref.version) == ("reward-v1", "reward-v2")
    assert good.snapshot_hash == snapshot_hash
    assert passed.promoted and passed.version.stage == common_pb2.MODEL_STAGE_SERVING
    assert [(c.name, c.threshold, c.passed) for c in passed.checks] == [
        ("accuracy_ci_low", 0.5, True)
    ]
    assert passed.checks[0].value > 0.5
    assert "is above chance (0.5) with confidence" in passed.checks[0].message
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert again.details() == "reward-v2 is already the served reward version"
    assert first_only.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (first_only.details() or "").startswith("reward-v2 is the first reward version served")

    assert not refused.promoted
    assert refused.version.stage == common_pb2.MODEL_STAGE_REJECTED
    assert [c.name for c in refused.checks] == ["accuracy_ci_low", "accuracy_vs_served"]
    ci, vs_served = refused.checks
    # The messages are promotion_check's own, naming the figure that failed.
    assert not ci.passed and ci.threshold == 0.5 and ci.value <= 0.5
    assert ci.message.startswith("pairwise accuracy ")
    assert ci.message.endswith("is not above chance (0.5) with confidence")
    # judged at the trainer's margin: the paired interval's lower end against -margin
    margin = TrainerSettings().gate_reward_margin
    assert not vs_served.passed and vs_served.threshold == -margin and vs_served.value <= -margin
    assert vs_served.message.startswith("pairwise accuracy ")
    assert " against reward-v2's 1.000 on the same " in vs_served.message
    assert vs_served.message.endswith(
        f"is not shown non-inferior, the interval's lower end not above the margin -{margin:g}"
    )

    assert replaced.promoted and all(c.passed for c in replaced.checks)
    assert replaced.checks[1].value == 0.0  # identical scores: every difference is zero
    assert rolled.ref.version == "reward-v2" and rolled.stage == common_pb2.MODEL_STAGE_SERVING
    stages = {v.ref.version: v.stage for v in after.versions}
    assert stages == {
        "reward-v1": common_pb2.MODEL_STAGE_REJECTED,
        "reward-v2": common_pb2.MODEL_STAGE_SERVING,
        "reward-v3": common_pb2.MODEL_STAGE_RETIRED,
    }
    assert exhausted.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert bad_kind.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad_kind.details() or "").startswith("kind:")
    # a policy with no parent and none served has nothing to be compared with
    assert policy_gate.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing to compare it with" in (policy_gate.details() or "")
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert no_store.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (no_store.details() or "").startswith(
        f"snapshot {'f' * 64!r} for the gate: preference service: NOT_FOUND"
    )

    assert [(d.version, d.promoted) for d in decisions] == [
        ("reward-v2", True),
        ("reward-v1", False),
        ("reward-v3", True),
    ]
    assert {d.principal for d in decisions} == {"local-ml-engineer"}
    assert [c["name"] for c in decisions[1].checks] == ["accuracy_ci_low", "accuracy_vs_served"]
    assert events == [
        ("promote", "reward-v2"),
        ("promote", "reward-v3"),
        ("rollback", "reward-v2"),
    ]


async def test_registry_decisions_and_rollback_history(
    tmp_path: Path, tiny_model_dir: Path, database_url: str
) -> None:
    reset_tables(database_url, registry.Base)
    db = Database(database_url, registry.Base, TRAINER_MIGRATIONS)
    reg = registry.Registry(tmp_path / "registry")
    reg.root.mkdir()
    try:
        db.create_schema()
        for _ in range(3):
            await db.run_write(lambda s: reg.register(s, tiny_model_dir, artefacts.REWARD))
        check: dict[str, object] = {"name": "accuracy_ci_low", "value": 0.9, "passed": True}

        def decide(version: str, ok: bool) -> Callable[[Session], registry.ModelVersion]:
            return lambda s: reg.decide(s, version, ok, [check], principal="alice")

        for version, ok in (("reward-v1", True), ("reward-v2", False), ("reward-v3", True)):
            await db.run_write(decide(version, ok))
        # A refusal of a version served before leaves it a rollback target.
        retired = await db.run_write(lambda s: reg.decide(s, "reward-v1", False, [check]))
        history = await db.run_sync(lambda s: reg.serving_history(s, artefacts.REWARD))
        back = await db.run_write(lambda s: reg.rollback(s, artefacts.REWARD))
        stages = await db.run_sync(
            lambda s: {v.version: v.stage for v in reg.list(s, artefacts.REWARD, 10, 0)}
        )
        with pytest.raises(FailedPrecondition, match="reward-v1 is the first reward version"):
            await db.run_write(lambda s: reg.rollback(s, artefacts.REWARD))
        with pytest.raises(FailedPrecondition, match="no policy version is served"):
            await db.run_write(lambda s: reg.rollback(s, artefacts.POLICY))
        decisions = await db.run_sync(lambda s: reg.decisions(s, "reward-v1"))
    finally:
        db.dispose()
    assert retired.stage == "retired"
    assert history == ["reward-v1", "reward-v3"]
    assert back.version == "reward-v1" and back.stage == "serving"
    assert stages == {"reward-v1": "serving", "reward-v2": "rejected", "reward-v3": "retired"}
    assert [(d.promoted, d.principal) for d in decisions] == [(True, "alice"), (False, "")]
    assert decisions[0].checks == [check]
