"""``python -m clinalign.trainer.jobs.worker <job-id>``: runs one job in its own process.

The local executor starts it with the trainer's settings in the environment
(``CLINALIGN_DATA_DIR``, ``CLINALIGN_TRAINER_DATABASE_URL``, the peer targets and tokens
file). It loads the job, which the executor has already marked RUNNING, does the work
under ``<data_dir>/jobs/<job-id>/``, logs progress to the job's rows and ends the job
SUCCEEDED or FAILED. A job cancelled meanwhile is left as it is: the state machine refuses
to move a cancelled job, and a progress write that finds it cancelled stops the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc.aio

from clinalign.common import artefacts
from clinalign.common.artefacts import ProgressFn
from clinalign.common.channels import Clients
from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.errors import ClinAlignError
from clinalign.common.logs import configure_logging
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs import ppo_job, report, specs, supervised
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.registry import versions as registry

log = logging.getLogger("clinalign.trainer.jobs.worker")
EXPORT_TIMEOUT_S = 600.0
REPORT_FILE = "metrics.json"

REPORT_DIR = "report"

TrainFn = Callable[
    [Path, Path | None, dict[str, Any], ProgressFn, CommonSettings],
    tuple[Path, dict[str, Any]],
]


def _without_settings(
    train: Callable[[Path, Path, dict[str, Any], ProgressFn], tuple[Path, dict[str, Any]]],
) -> TrainFn:
    def run(
        job_dir: Path,
        snapshot: Path | None,
        inputs: dict[str, Any],
        progress: ProgressFn,
        common: CommonSettings,
    ) -> tuple[Path, dict[str, Any]]:
        assert snapshot is not None
        return train(job_dir, snapshot, inputs, progress)

    return run


# Each kind the worker runs: the snapshot export it trains on (a ppo job reads one only
# when its prompts come from a snapshot), how it trains, and the registry kind it makes.
KINDS: dict[str, tuple[pb.ExportKind.ValueType, TrainFn, str]] = {
    "reward_model": (
        pb.EXPORT_KIND_PREFERENCE,
        _without_settings(supervised.train_reward_model_job),
        artefacts.REWARD,
    ),
    "sft": (pb.EXPORT_KIND_SFT, _without_settings(supervised.train_sft_job), artefacts.POLICY),
    "dpo": (
        pb.EXPORT_KIND_PREFERENCE,
        _without_settings(supervised.train_dpo_job),
        artefacts.POLICY,
    ),
    "ppo": (pb.EXPORT_KIND_PREFERENCE, ppo_job.train_ppo_job, artefacts.POLICY),
    "cost_model": (
        pb.EXPORT_KIND_HARM,
        _without_settings(supervised.train_cost_model_job),
        artefacts.COST,
    ),
}


def process_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when run alone). Every
    rank trains; rank 0 alone writes the job's state, report and registry entry."""
    return int(os.environ.get("RANK", "0"))


class _Cancelled(Exception):
    """The job stopped being RUNNING (cancelled) while the worker ran it."""


def failure_reason(exc: BaseException) -> str:
    """What a FAILED job says about its error: the exception's type and message. The
    project's errors and gRPC statuses name fields and codes only; any other message is
    cut short, as a library's message could quote its input."""
    if isinstance(exc, ClinAlignError):
        return f"{type(exc).__name__}: {exc.message}"
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"preference service: {exc.code().name}: {exc.details()}"
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


async def fetch_snapshot(
    common: CommonSettings,
    snapshot_id: str,
    kind: pb.ExportKind.ValueType = pb.EXPORT_KIND_PREFERENCE,
) -> tuple[bytes, str]:
    """(JSONL export of both splits of one record kind, the snapshot's manifest JSON), as
    `clinalign snapshot export` fetches them, with the service token."""
    async with Clients(common, service="trainer-job") as clients:
        stub = clients.preference
        got = await stub.GetSnapshot(pb.GetSnapshotRequest(id=snapshot_id), timeout=30)
        request = pb.ExportSnapshotRequest(id=snapshot_id, format=pb.EXPORT_FORMAT_JSONL, kind=kind)
        chunks = [
            part.chunk async for part in stub.ExportSnapshot(request, timeout=EXPORT_TIMEOUT_S)
        ]
        return b"".join(chunks), got.snapshot.manifest_json


def _link_report(model_dir: Path, report_dir: Path) -> None:
    """Records the job's report directory in the manifest the registry will copy, so a
    version leads to its training curves."""
    path = model_dir / artefacts.MANIFEST_NAME
    if path.is_file():
        manifest = json.loads(path.read_text())
        path.write_text(json.dumps({**manifest, "report": str(report_dir)}, indent=2) + "\n")


def run_job(db: Database, common: CommonSettings, job_id: str) -> bool:
    """Runs the job; False when it failed (the caller exits non-zero, so that under
    torchrun the other ranks are stopped rather than left waiting)."""
    with db.sessions.begin() as session:
        job = jobs.get(session, job_id)
    if job.state != jobs.RUNNING:
        log.info("job is not running; nothing to do", extra={"fields": {"job_id": job_id}})
        return True
    job_dir = (common.data_dir / "jobs" / job_id).resolve()
    rank = process_rank()

    def progress(step: int, total: int, metrics: Mapping[str, float]) -> None:
        if rank != 0:
            return
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
        with db.sessions.begin() as session:
            if not jobs.record_progress(session, job_id, step, total, finite):
                raise _Cancelled(job_id)

    try:
        if job.kind not in KINDS:
            raise NotImplementedError(f"the worker cannot run {job.kind} jobs yet")
        export_kind, train, registry_kind = KINDS[job.kind]
        snapshot = None
        snapshot_id = str(job.spec.get("snapshot_id", ""))
        if snapshot_id:
            data, manifest_json = asyncio.run(fetch_snapshot(common, snapshot_id, export_kind))
            name = specs.SNAPSHOT_FILE if rank == 0 else f"snapshot.rank{rank}.jsonl"
            snapshot = specs.write_snapshot(job_dir, data, manifest_json, name)
        out, manifest = train(job_dir, snapshot, job.inputs, progress, common)
        if rank != 0:
            return True
        metrics = {
            k: float(v)
            for k, v in dict(manifest.get("metrics", {})).items()
            if isinstance(v, int | float) and math.isfinite(v)
        }
        with db.sessions.begin() as session:
            history = [
                (e.step, e.metrics)
                for e in jobs.events_after(session, job_id, 0)
                if e.metrics and e.state == jobs.RUNNING
            ]
        report.write_report(job_dir / REPORT_DIR, job.kind, history, metrics)
        (job_dir / REPORT_FILE).write_text(json.dumps({"metrics": metrics}, indent=2))
        _link_report(out, job_dir / REPORT_DIR)
        reg = registry.Registry(common.data_dir / "registry")
        with db.sessions.begin() as session:
            version = reg.register(
                session,
                out,
                registry_kind,
                parent_version=str(job.inputs.get("parent_version", "")),
                job_id=job_id,
            ).version
            jobs.transition(
                session,
                job_id,
                jobs.SUCCEEDED,
                model_version=version,
                metrics={**job.metrics, **metrics},
                report_uri=str(job_dir / REPORT_DIR),
            )
        # The registry holds its own copy; the job directory keeps the export and the log.
        shutil.rmtree(out, ignore_errors=True)
        log.info("job succeeded", extra={"fields": {"job_id": job_id, "version": version}})
        return True
    except _Cancelled:
        log.info("job was cancelled; stopping", extra={"fields": {"job_id": job_id}})
        return False
    except Exception as exc:
        reason = failure_reason(exc)
        log.error("job failed: %s", reason, extra={"fields": {"job_id": job_id}})
        try:
            with db.sessions.begin() as session:
                jobs.transition(session, job_id, jobs.FAILED, failure_reason=reason)
        except ClinAlignError:
            pass  # cancelled meanwhile: the cancellation stands
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m clinalign.trainer.jobs.worker <job-id>", file=sys.stderr)
        return 2
    common, settings = CommonSettings(), TrainerSettings()
    configure_logging("trainer-worker", common.log_level)
    url = settings.database_url or default_sqlite_url(common.data_dir, "trainer")
    db = Database(url, registry.Base)
    try:
        ok = run_job(db, common, args[0])
    finally:
        db.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
