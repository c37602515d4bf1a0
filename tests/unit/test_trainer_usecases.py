"""The trainer's use cases called directly, without gRPC: each validates its input (the
error names the field) before anything is written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clinalign.common.config import CommonSettings
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument, NotFound
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.jobs.executor import Executors, LocalExecutor
from clinalign.trainer.registry import versions
from clinalign.trainer.server import MIGRATIONS as TRAINER_MIGRATIONS
from clinalign.trainer.usecases import Trainer
from tests.conftest import reset_tables


@pytest.fixture
def trainer(database_url: str, common: CommonSettings, tmp_path: Path) -> Iterator[Trainer]:
    reset_tables(database_url, versions.Base)
    db = Database(database_url, versions.Base, TRAINER_MIGRATIONS)
    db.create_schema()
    settings = TrainerSettings()
    executor = Executors(db, {"local": LocalExecutor(db, common, settings, database_url)})
    yield Trainer(db, versions.Registry(tmp_path / "registry"), executor, settings)
    db.dispose()


async def test_a_bad_submission_is_refused_and_leaves_no_job(trainer: Trainer) -> None:
    with pytest.raises(InvalidArgument, match="is required: one of JOB_KIND_SFT") as info:
        await trainer.submit_job("", "", {}, key="k1")
    assert info.value.field == "spec.kind"
    with pytest.raises(FailedPrecondition, match="kubernetes executor is not available"):
        await trainer.submit_job("reward_model", "kubernetes", {}, key="k2")
    with pytest.raises(InvalidArgument, match="snapshot id or content hash") as info:
        await trainer.submit_job("reward_model", "", {"kind": "JOB_KIND_REWARD_MODEL"}, key="")
    assert info.value.field == "spec.snapshot_id"
    assert await trainer.list_jobs([], [], 10, "") == ([], "")
    assert await trainer.db.run_sync(lambda s: jobs.find_by_key(s, "k1", {})) is None


async def test_job_and_registry_reads_name_the_missing_field(trainer: Trainer) -> None:
    for call, field in [
        (trainer.get_job(""), "id"),
        (trainer.cancel_job(""), "id"),
        (trainer.get_model_version(""), "version"),
        (trainer.promote_model("", "ml-1"), "version"),
        (trainer.register_model("", "policy", serve_if_none=False), "path"),
        (trainer.register_model("/models/x", "", serve_if_none=False), "kind"),
        (trainer.rollback_model(""), "kind"),
        (trainer.list_model_versions("3", 10, ""), "kind"),
        (trainer.list_jobs([None], [], 10, ""), "states"),
        (trainer.list_jobs([], [None], 10, ""), "kinds"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            await call
        assert info.value.field == field
    with pytest.raises(NotFound):
        await trainer.get_job("job-missing")
    assert await trainer.list_model_versions(None, 10, "") == ([], "")


async def test_the_serving_state_changes_only_through_the_gate_and_rollback(
    trainer: Trainer, tiny_model_dir: Path
) -> None:
    """Promotion, canary, rollback: each change recorded with who and why; the watch sees
    the state first and again after each change."""
    reg, db = trainer.registry, trainer.db
    first = await trainer.register_model(str(tiny_model_dir), "policy", serve_if_none=True)
    second = await trainer.register_model(str(tiny_model_dir), "policy", serve_if_none=True)
    third = await trainer.register_model(str(tiny_model_dir), "policy", serve_if_none=False)
    assert (first.stage, second.stage) == ("serving", "registered")  # only the first serves

    watch = trainer.watch_serving_state()
    start = await anext(watch)
    assert start.states[0].stable is not None and start.states[0].stable.version == first.version

    def decide(version: str, share: float = 0.0) -> None:
        with db.sessions.begin() as s:
            reg.decide(s, version, True, [], "engineer", canary_share=share, reason="passed")

    decide(second.version, 0.25)  # the gate passed it as a canary
    changed = await anext(watch)
    policy = changed.states[0]
    assert policy.stable is not None and policy.stable.version == first.version
    assert policy.canary is not None and policy.canary.version == second.version
    assert (policy.canary_share, policy.canary.stage) == (0.25, "canary")

    # A rollback ends the canary first; the stable version goes on serving.
    served = await trainer.rollback_model("policy", "engineer", "canary error rate")
    assert served.version == first.version
    decide(third.version)
    await trainer.rollback_model("policy", "engineer", "")
    snapshot = await trainer.serving_state(0)
    assert snapshot.states[0].stable is not None
    assert snapshot.states[0].stable.version == first.version
    assert snapshot.states[0].canary is None
    assert [(c.action, c.version, c.principal, c.reason) for c in snapshot.history] == [
        ("rollback", first.version, "engineer", f"rolled back {third.version}"),
        ("promote", third.version, "engineer", "passed"),
        ("canary_end", second.version, "engineer", "canary error rate"),
        ("canary", second.version, "engineer", "passed"),
        ("initial", first.version, "", "registered: no policy version served"),
    ]
    assert snapshot.revision == snapshot.history[0].revision
    await watch.aclose()


async def test_serving_requests_name_the_bad_field(trainer: Trainer, tiny_model_dir: Path) -> None:
    version = await trainer.register_model(str(tiny_model_dir), "policy", serve_if_none=True)
    with pytest.raises(InvalidArgument, match=r"must be in \(0, 0.5\]") as info:
        await trainer.promote_model(version.version, "engineer", canary_share=0.7)
    assert info.value.field == "canary_share"
    with pytest.raises(InvalidArgument, match="longer than 1000 characters") as info:
        await trainer.rollback_model("policy", "engineer", "x" * 1001)
    assert info.value.field == "reason"
    with pytest.raises(InvalidArgument, match=r"must be in \[0, 500\]") as info:
        await trainer.serving_state(501)
    assert info.value.field == "history_limit"
    with trainer.db.sessions.begin() as s:
        with pytest.raises(InvalidArgument, match="canaries are for policies") as info:
            reward = trainer.registry.get(s, version.version)
            row = s.get(versions.ModelVersionRow, reward.version)
            assert row is not None
            row.kind = "reward"
            trainer.registry.decide(s, reward.version, True, [], "", canary_share=0.1)
    assert info.value.field == "canary_share"


async def test_registering_a_directory_without_weights_names_the_path(
    trainer: Trainer, tmp_path: Path
) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(InvalidArgument, match="holds no weight files") as info:
        await trainer.register_model(str(empty), "policy", serve_if_none=False)
    assert info.value.field == "path"
    assert not [p for p in (tmp_path / "registry").glob("*") if not p.name.startswith(".")]
