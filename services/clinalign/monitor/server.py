"""The monitor service process, and its periodic tasks.

- Gauges: every ``stats_interval_s`` the drift (PSI, KS) and flag-rate gauges are set for
  each version with outputs in the trailing ``drift_window_minutes``.
- Retention: every ``retention_interval_s`` outputs older than ``retention_days`` are
  deleted (``store.purge_expired``). A periodic sweep rather than a delete inside each
  RecordOutputs batch keeps the ingest path's transaction short, and expires outputs
  even while no traffic arrives.
- Feedback: every ``feedback_interval_s`` confirmed flags not yet delivered go to the
  preference store (``clinalign.monitor.feedback``).
- Retraining: every ``retrain_interval_s`` (when > 0) the retraining policy is evaluated
  and acts (``clinalign.monitor.retraining``); at start-up, runs a restart interrupted
  are carried on from their last finished step.

The monitor calls its peers (preference, trainer, reward, generation) as the ``service``
role over channels opened on first use (``Peers``).

A failing round is logged (its exception type only) and the next one runs as planned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc.aio

from clinalign.common.channels import Clients
from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.deid import build_redactor
from clinalign.common.server import DatabaseApp, Readiness, run_main
from clinalign.monitor import feedback, flags, metrics, retraining, scoring, store
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.servicer import ROLES, SERVICE_CALLERS, MonitorServicer
from clinalign.monitor.stats import cost_verdicts, window_stats
from clinalign.monitor.usecases import Limits, Monitor
from clinalign.monitor.v1 import monitor_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"

log = logging.getLogger("clinalign.monitor")


class MonitorApp(DatabaseApp):
    name = "monitor"
    full_name = "clinalign.monitor.v1.MonitorService"
    roles = ROLES
    service_callers = SERVICE_CALLERS

    def __init__(
        self,
        common: CommonSettings,
        settings: MonitorSettings,
        redact: store.Redactor | None = None,
    ) -> None:
        url = settings.database_url or default_sqlite_url(common.data_dir, "monitor")
        super().__init__(Database(url, store.Base, MIGRATIONS, baseline_table="outputs"))
        self.settings = settings
        limits = Limits.from_settings(settings)
        self.peers = Clients(common, service="monitor")
        self.retraining = retraining.Retraining(
            self.db, self.peers, retraining.Policy.from_settings(settings)
        )
        self.feedback = feedback.Delivery(
            self.db, self.peers, feedback.Settings.from_settings(settings)
        )
        self.scoring = scoring.Scoring(
            self.db, self.peers, scoring.Settings(settings.score_batch, settings.score_max_attempts)
        )
        self.monitor = Monitor(
            self.db, redact or build_redactor(), limits, self.retraining, self.peers
        )
        self.servicer = MonitorServicer(self.monitor)
        self._tasks: list[asyncio.Task[None]] = []

    def register(self, server: grpc.aio.Server) -> None:
        monitor_pb2_grpc.add_MonitorServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness: Readiness) -> None:
        await super().start(readiness)
        s = self.settings
        self._tasks.append(
            asyncio.create_task(_every("gauges", s.stats_interval_s, self.refresh_gauges))
        )
        if s.retention_days > 0:
            self._tasks.append(
                asyncio.create_task(_every("retention", s.retention_interval_s, self.purge_expired))
            )
        self._tasks.append(
            asyncio.create_task(_every("feedback", s.feedback_interval_s, self.deliver_feedback))
        )
        if s.score_outputs:
            self._tasks.append(
                asyncio.create_task(_every("scoring", s.score_interval_s, self.score_outputs))
            )
        await self.retraining.resume()
        if s.retrain_interval_s > 0:
            self._tasks.append(
                asyncio.create_task(
                    _every("retraining", s.retrain_interval_s, self.evaluate_retraining)
                )
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.retraining.stop()
        await self.peers.close()
        await super().stop()

    async def deliver_feedback(self) -> None:
        """One feedback round."""
        delivered, failed = await self.feedback.deliver_due()
        if delivered or failed:
            log.info("flag feedback", extra={"fields": {"delivered": delivered, "failed": failed}})

    async def score_outputs(self) -> None:
        """Scoring rounds until no output is due (or one scores nothing)."""
        while await self.scoring.score_due() == self.settings.score_batch:
            pass

    async def evaluate_retraining(self) -> None:
        """One scheduled evaluation of the retraining policy."""
        await self.retraining.evaluate(dry_run=False)

    async def refresh_gauges(self) -> None:
        """Sets the drift, flag-rate and cost gauges over the trailing window, and the
        cost-model gauges over ``cost_verdict_window_hours``."""
        end = datetime.now(UTC)
        start = end - timedelta(minutes=self.settings.drift_window_minutes)
        stats = await self.db.run_sync(lambda s: window_stats(s, None, start, end, flags.CONFIRMED))
        for v in stats:
            metrics.FLAG_RATE.labels(v.model_version).set(v.flag_rate)
            if v.baseline_flag_rate is not None:
                metrics.BASELINE_FLAG_RATE.labels(v.model_version).set(v.baseline_flag_rate)
            if v.cost_mean is not None:
                metrics.COST_MEAN.labels(v.model_version).set(v.cost_mean)
            if v.baseline_cost_mean is not None:
                metrics.BASELINE_COST_MEAN.labels(v.model_version).set(v.baseline_cost_mean)
            psi, ks = v.drift(self.settings.psi_bins)
            if psi is not None and ks is not None:
                metrics.REWARD_PSI.labels(v.model_version).set(psi)
                metrics.REWARD_KS.labels(v.model_version).set(ks)
        since = end - timedelta(hours=self.settings.cost_verdict_window_hours)
        judged = await self.db.run_sync(
            lambda s: cost_verdicts(s, None, since, end, flags.CONFIRMED, flags.DISMISSED)
        )
        # versions no longer judged in the window (retired, aged out) leave the gauges
        metrics.COST_MODEL_VERDICTS.clear()
        metrics.COST_MODEL_AUROC.clear()
        for c in judged:
            metrics.COST_MODEL_VERDICTS.labels(c.cost_model_version, "harmful").set(len(c.harmful))
            metrics.COST_MODEL_VERDICTS.labels(c.cost_model_version, "clean").set(len(c.clean))
            auroc = c.auroc()
            if auroc is not None:
                metrics.COST_MODEL_AUROC.labels(c.cost_model_version).set(auroc)

    async def purge_expired(self) -> None:
        """One retention sweep."""
        cutoff = datetime.now(UTC) - timedelta(days=self.settings.retention_days)
        deleted, erased = await self.db.run_write(lambda s: store.purge_expired(s, cutoff))
        metrics.PURGED.inc(deleted)
        if deleted or erased:
            log.info("retention", extra={"fields": {"deleted": deleted, "text_erased": erased}})


async def _every(name: str, interval_s: float, work: Callable[[], Awaitable[None]]) -> None:
    while True:
        try:
            await work()
        except Exception as exc:  # a bad round must not end the task
            log.warning(
                "periodic task failed",
                extra={"fields": {"task": name, "error": type(exc).__name__}},
            )
        await asyncio.sleep(interval_s)


def main() -> None:
    run_main(MonitorApp, MonitorSettings)
