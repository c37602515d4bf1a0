"""The trainer service process: its store, registry, job executor and servicer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc.aio

from clinalign.common import judging
from clinalign.common.channels import Clients
from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.errors import FailedPrecondition
from clinalign.common.server import DatabaseApp, Readiness, run_main
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs import worker
from clinalign.trainer.jobs.executor import Executors, JobExecutor, LocalExecutor
from clinalign.trainer.metrics import register_job_metrics
from clinalign.trainer.registry import gate
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.registry.policy_gate import ReplayCase, ReplayFetcher
from clinalign.trainer.servicer import ROLES, SERVICE_CALLERS, TrainerServicer
from clinalign.trainer.usecases import Trainer
from clinalign.trainer.v1 import trainer_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"


def snapshot_fetcher(common: CommonSettings) -> gate.SnapshotFetcher:
    """Reads a snapshot's records and content hash from the preference service, as jobs
    do; its errors become the gate's failed precondition."""

    async def fetch(snapshot_id: str, kind: str = "preference") -> tuple[list[dict[str, Any]], str]:
        export = ppb.EXPORT_KIND_HARM if kind == "harm" else ppb.EXPORT_KIND_PREFERENCE
        try:
            data, manifest_json = await worker.fetch_snapshot(common, snapshot_id, export)
        except grpc.aio.AioRpcError as err:
            raise FailedPrecondition(
                f"snapshot {snapshot_id!r} for the gate: preference service: "
                f"{err.code().name}: {err.details()}"
            ) from None
        content_hash = json.loads(manifest_json).get("content_hash", "") if manifest_json else ""
        return gate.records_from_export(data), str(content_hash or snapshot_id)

    return fetch


def replay_fetcher(common: CommonSettings) -> ReplayFetcher:
    """Reads the monitor's confirmed flags at or above a severity (``ListReplayCases``,
    every page) with the service token; an unreachable monitor is the gate's failed
    precondition, so no policy is promoted without its flags replayed."""
    from clinalign.common.v1 import common_pb2 as cpb
    from clinalign.monitor.v1 import monitor_pb2 as mpb

    async def fetch(min_severity: str) -> list[ReplayCase]:
        cases: list[ReplayCase] = []
        token = ""
        async with Clients(common, service="trainer") as clients:
            while True:
                try:
                    page = await clients.monitor.ListReplayCases(
                        mpb.ListReplayCasesRequest(
                            min_severity=mpb.Severity.Value(min_severity),
                            page_size=500,
                            page_token=token,
                        ),
                        timeout=30,
                    )
                except grpc.aio.AioRpcError as err:
                    raise FailedPrecondition(
                        f"the gate replays confirmed flags: monitor service: "
                        f"{err.code().name}: {err.details()}"
                    ) from None
                cases += [
                    ReplayCase(
                        flag_id=c.flag_id,
                        category=cpb.ErrorCategory.Name(c.category),
                        severity=mpb.Severity.Name(c.severity),
                        prompt=c.prompt,
                        model_version=c.model_version,
                    )
                    for c in page.cases
                ]
                token = page.next_page_token
                if not token:
                    return cases

    return fetch


class TrainerApp(DatabaseApp):
    name = "trainer"
    full_name = "clinalign.trainer.v1.TrainerService"
    roles = ROLES
    service_callers = SERVICE_CALLERS

    def __init__(self, common: CommonSettings, settings: TrainerSettings) -> None:
        url = settings.database_url or default_sqlite_url(common.data_dir, "trainer")
        super().__init__(Database(url, registry.Base, MIGRATIONS, baseline_table="model_versions"))
        register_job_metrics(self.db)  # job counts, and each running job's step and metrics
        self.registry = registry.Registry(common.data_dir / "registry")
        by_name: dict[str, JobExecutor] = {"local": LocalExecutor(self.db, common, settings, url)}
        if settings.kubernetes_on:
            from clinalign.trainer.jobs.kube import KubernetesExecutor  # the client only when used

            by_name["kubernetes"] = KubernetesExecutor(self.db, common, settings)
        self.executor = Executors(self.db, by_name)
        self.trainer = Trainer(
            self.db,
            self.registry,
            self.executor,
            settings,
            snapshot_fetcher(common),
            tuple(self._judge(spec) for spec in settings.gate_judges),
            replay_fetcher(common),
        )
        self.servicer = TrainerServicer(self.trainer)

    def _judge(self, spec: str) -> judging.Judge:
        """A configured gate judge; ``cost-model`` reads the cost model this registry
        serves at each decision."""
        if spec != judging.COST_MODEL:
            return judging.load(spec)
        from clinalign.common.artefacts import COST
        from clinalign.trainer.registry.cost_judge import CostModelJudge

        async def served_dir() -> Path | None:
            found = await self.db.run_sync(lambda s: self.registry.served(s, COST))
            return Path(found.artifact_uri) if found else None

        return CostModelJudge(served_dir)

    def register(self, server: grpc.aio.Server) -> None:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness: Readiness) -> None:
        self.registry.root.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.db.create_schema)
        # Jobs an earlier trainer left are settled before the service reports ready.
        await self.executor.start()
        await readiness.set(True)

    async def stop(self) -> None:
        await self.executor.stop()
        await super().stop()


def main() -> None:
    run_main(TrainerApp, TrainerSettings)
