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
    assert await trainer.db.run_sync(lambda s: jobs.find_by_key(s, "k1")) is None


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
