"""Trainer metrics: the jobs and the training curves of the running ones, read from the
jobs database when Prometheus scrapes.

A custom collector rather than gauges set by the workers: a job runs in its own process
(``clinalign.trainer.jobs.worker``), and the database the worker writes its progress to is
the one place that knows every job, so the trainer's /metrics endpoint reads it at
scrape time. Names carry the service prefix ``clinalign_trainer_``. Per-job series
exist for RUNNING jobs only, so their number is bounded by the executor's concurrency; a
job that ends drops out at the next scrape (its final metrics stay on the job and in the
registry). Labels are job ids, kinds, states and metric names, never data.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator
from weakref import WeakKeyDictionary

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from clinalign.common.db import Database
from clinalign.trainer.jobs import store as jobs

log = logging.getLogger(__name__)

# Every (kind, state) pair is exported, zeros included, so that a rate or an alert on a
# state has a series before the first such job.
KINDS = ("sft", "reward_model", "ppo", "dpo", "cost_model")
STATES = (jobs.QUEUED, jobs.RUNNING, jobs.SUCCEEDED, jobs.FAILED, jobs.CANCELLED)

_registered: WeakKeyDictionary[CollectorRegistry, JobMetricsCollector] = WeakKeyDictionary()
_registering = threading.Lock()


def _families() -> dict[str, GaugeMetricFamily]:
    per_job = ["job_id", "kind"]
    return {
        "jobs": GaugeMetricFamily(
            "clinalign_trainer_jobs", "Training jobs by kind and state.", labels=["kind", "state"]
        ),
        "step": GaugeMetricFamily(
            "clinalign_trainer_job_step",
            "Optimiser steps a running job has taken (its last logged step).",
            labels=per_job,
        ),
        "total": GaugeMetricFamily(
            "clinalign_trainer_job_total_steps",
            "Optimiser steps a running job will take in all.",
            labels=per_job,
        ),
        "progress": GaugeMetricFamily(
            "clinalign_trainer_job_progress_ratio",
            "Share of its steps a running job has taken, from 0 to 1.",
            labels=per_job,
        ),
        "metric": GaugeMetricFamily(
            "clinalign_trainer_job_metric",
            "Latest logged value of each training metric of a running job (loss, score, kl).",
            labels=[*per_job, "metric"],
        ),
    }


class JobMetricsCollector(Collector):
    """Reads the jobs table at each scrape; a database error leaves out what it could not
    read and never fails the scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # The names, without a query: registering must not need the database.
        yield from _families().values()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = _families()
        try:
            self._read(families)
        except SQLAlchemyError as err:
            log.debug("trainer job metrics: database error: %s", type(err).__name__)
        yield from families.values()

    def _read(self, families: dict[str, GaugeMetricFamily]) -> None:
        with self.db.sessions() as session:
            counts = {(k, s): 0 for k in KINDS for s in STATES}
            query = select(jobs.JobRow.kind, jobs.JobRow.state, func.count()).group_by(
                jobs.JobRow.kind, jobs.JobRow.state
            )
            for kind, state, count in session.execute(query):
                counts[(kind, state)] = int(count)
            for (kind, state), count in sorted(counts.items()):
                families["jobs"].add_metric([kind, state], count)

            running = session.execute(
                select(
                    jobs.JobRow.id,
                    jobs.JobRow.kind,
                    jobs.JobRow.step,
                    jobs.JobRow.total_steps,
                    jobs.JobRow.metrics_json,
                )
                .where(jobs.JobRow.state == jobs.RUNNING)
                .order_by(jobs.JobRow.id)
            )
            for job_id, kind, step, total, metrics_json in running:
                labels = [job_id, kind]
                families["step"].add_metric(labels, step)
                families["total"].add_metric(labels, total)
                if total > 0:
                    families["progress"].add_metric(labels, min(step / total, 1.0))
                for name, value in sorted(_metrics(metrics_json).items()):
                    families["metric"].add_metric([*labels, name], value)


def _metrics(metrics_json: str) -> dict[str, float]:
    """A job row's latest metrics, finite numbers only."""
    try:
        loaded = json.loads(metrics_json or "{}")
    except ValueError:
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {
        str(name): float(value)
        for name, value in loaded.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def register_job_metrics(
    db: Database, registry: CollectorRegistry = REGISTRY
) -> JobMetricsCollector:
    """Registers the trainer's job metrics on ``registry`` once; registering again (a
    second app in one process, as in tests) points the collector at the newer ``db``."""
    with _registering:
        collector = _registered.get(registry)
        if collector is None:
            collector = JobMetricsCollector(db)
            registry.register(collector)
            _registered[registry] = collector
        else:
            collector.db = db
        return collector
