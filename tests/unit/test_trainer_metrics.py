"""The trainer's job metrics, read from a real SQLite jobs database at scrape time: job
counts by kind and state (zeros included), step, total, progress and latest metrics of
running jobs only; a database error leaves a scrape with what it could read."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clinalign.common.db import Database
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.metrics import register_job_metrics
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.server import MIGRATIONS as TRAINER_MIGRATIONS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def db(trainer_db: Database) -> Database:
    return trainer_db


def _scrape(reg: CollectorRegistry) -> Samples:
    text = generate_latest(reg).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _per_job(samples: Samples, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(v for _, v in labels): value for (n, labels), value in samples.items() if n == name
    }


def _submit(db: Database, kind: str, *states: str) -> str:
    with db.sessions.begin() as session:
        job, _ = jobs.submit(session, kind, "local", {"snapshot_id": "s1"}, {}, "")
        for state in states:
            jobs.transition(session, job.id, state)
        return job.id


def _progress(db: Database, job_id: str, step: int, total: int, **metrics: float) -> None:
    with db.sessions.begin() as session:
        assert jobs.record_progress(session, job_id, step, total, metrics)


def test_running_jobs_export_their_progress_and_finished_ones_drop_out(db: Database) -> None:
    reg = CollectorRegistry()
    register_job_metrics(db, reg)
    sft = _submit(db, "sft", jobs.RUNNING)
    ppo = _submit(db, "ppo", jobs.RUNNING)
    _submit(db, "sft")  # queued
    _submit(db, "dpo", jobs.RUNNING, jobs.FAILED)
    _progress(db, sft, 1, 8, loss=2.5, learning_rate=1e-3)
    _progress(db, sft, 2, 8, loss=2.25)  # the latest value of each metric is kept
    _progress(db, ppo, 3, 12, score=0.4, kl=0.02)

    samples = _scrape(reg)
    jobs_by_state = _per_job(samples, "clinalign_trainer_jobs")
    assert jobs_by_state[("sft", "running")] == 1 and jobs_by_state[("sft", "queued")] == 1
    assert jobs_by_state[("ppo", "running")] == 1 and jobs_by_state[("dpo", "failed")] == 1
    assert jobs_by_state[("reward_model", "succeeded")] == 0  # zeros are exported too
    assert len(jobs_by_state) == 5 * 5
    assert _per_job(samples, "clinalign_trainer_job_step") == {(sft, "sft"): 2, (ppo, "ppo"): 3}
    assert _per_job(samples, "clinalign_trainer_job_total_steps") == {
        (sft, "sft"): 8,
        (ppo, "ppo"): 12,
    }
    assert _per_job(samples, "clinalign_trainer_job_progress_ratio") == {
        (sft, "sft"): 0.25,
        (ppo, "ppo"): 0.25,
    }
    # Labels sort as job_id, kind, metric.
    assert _per_job(samples, "clinalign_trainer_job_metric") == {
        (sft, "sft", "learning_rate"): 1e-3,
        (sft, "sft", "loss"): 2.25,
        (ppo, "ppo", "kl"): 0.02,
        (ppo, "ppo", "score"): 0.4,
    }

    with db.sessions.begin() as session:
        jobs.transition(session, sft, jobs.SUCCEEDED)
        jobs.transition(session, ppo, jobs.CANCELLED)
    samples = _scrape(reg)
    for name in ("step", "total_steps", "progress_ratio", "metric"):
        assert _per_job(samples, f"clinalign_trainer_job_{name}") == {}, name
    jobs_by_state = _per_job(samples, "clinalign_trainer_jobs")
    assert jobs_by_state[("sft", "succeeded")] == 1 and jobs_by_state[("sft", "running")] == 0
    assert jobs_by_state[("ppo", "cancelled")] == 1


def test_a_database_error_does_not_break_the_scrape(tmp_path: Path) -> None:
    # No schema: every query fails, as with a database that is down or not migrated yet.
    broken = Database(f"sqlite:///{tmp_path / 'empty.db'}", registry.Base, TRAINER_MIGRATIONS)
    reg = CollectorRegistry()
    register_job_metrics(broken, reg)
    text = generate_latest(reg).decode()
    broken.dispose()
    assert "# TYPE clinalign_trainer_jobs gauge" in text
    assert "# TYPE clinalign_trainer_job_metric gauge" in text
    assert not [line for line in text.splitlines() if not line.startswith("#")]


def test_registering_is_idempotent_per_registry(db: Database, tmp_path: Path) -> None:
    reg = CollectorRegistry()
    first = register_job_metrics(db, reg)
    other = Database(f"sqlite:///{tmp_path / 'other.db'}", registry.Base, TRAINER_MIGRATIONS)
    other.create_schema()
    try:
        assert register_job_metrics(other, reg) is first  # no DuplicateTimeseries
        assert first.db is other  # scrapes follow the newer database
        _submit(other, "dpo")
        assert _per_job(_scrape(reg), "clinalign_trainer_jobs")[("dpo", "queued")] == 1
        assert register_job_metrics(db, CollectorRegistry()) is not first
    finally:
        other.dispose()
