"""``python -m clinalign.trainer.worker <job-id>``: runs one job in its own process.

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
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc.aio

from clinalign.common.channels import open_channel, service_token
from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.errors import ClinAlignError
from clinalign.common.logs import configure_logging
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc
from clinalign.trainer import jobs, policy_jobs, registry, reward_job
from clinalign.trainer.config import TrainerSettings

log = logging.getLogger("clinalign.trainer.worker")
EXPORT_TIMEOUT_S = 600.0
REPORT_FILE = "metrics.json"

TrainFn = Callable[[Path, Path, dict[str, Any], reward_job.ProgressFn], tuple[Path, dict[str, Any]]]
# Each kind the worker runs: the snapshot export it trains on, how it trains, and the
# registry kind of what it makes.
KINDS: dict[str, tuple[pb.ExportKind.ValueType, TrainFn, str]] = {
    "reward_model": (pb.EXPORT_KIND_PREFERENCE, reward_job.train, registry.REWARD),
    "sft": (pb.EXPORT_KIND_SFT, policy_jobs.train_sft_job, registry.POLICY),
    "dpo": (pb.EXPORT_KIND_PREFERENCE, policy_jobs.train_dpo_job, registry.POLICY),
}


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
    target = common.preference_target
    async with open_channel(target, common, service_token(common)) as channel:
        stub = preference_pb2_grpc.PreferenceServiceStub(channel)
        got = await stub.GetSnapshot(pb.GetSnapshotRequest(id=snapshot_id), timeout=30)
        request = pb.ExportSnapshotRequest(id=snapshot_id, format=pb.EXPORT_FORMAT_JSONL, kind=kind)
        chunks = [
            part.chunk async for part in stub.ExportSnapshot(request, timeout=EXPORT_TIMEOUT_S)
        ]
        return b"".join(chunks), got.snapshot.manifest_json


def run_job(db: Database, common: CommonSettings, job_id: str) -> None:
    with db.sessions.begin() as session:
        job = jobs.get(session, job_id)
    if job.state != jobs.RUNNING:
        log.info("job is not running; nothing to do", extra={"fields": {"job_id": job_id}})
        return
    job_dir = (common.data_dir / "jobs" / job_id).resolve()

    def progress(step: int, total: int, loss: float) -> None:
        with db.sessions.begin() as session:
            if not jobs.record_progress(session, job_id, step, total, {"loss": loss}):
                raise _Cancelled(job_id)

    try:
        if job.kind not in KINDS:
            raise NotImplementedError(f"the worker cannot run {job.kind} jobs yet")
        export_kind, train, registry_kind = KINDS[job.kind]
        data, manifest_json = asyncio.run(
            fetch_snapshot(common, str(job.spec["snapshot_id"]), export_kind)
        )
        snapshot = reward_job.write_snapshot(job_dir, data, manifest_json)
        out, manifest = train(job_dir, snapshot, job.inputs, progress)
        metrics = {
            k: float(v)
            for k, v in dict(manifest.get("metrics", {})).items()
            if isinstance(v, int | float) and math.isfinite(v)
        }
        # The report: final metrics and the loss curve (plots are not drawn yet).
        report = {"metrics": metrics, "loss_curve": manifest.get("loss_curve", [])}
        (job_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
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
                report_uri=str(job_dir),
            )
        # The registry holds its own copy; the job directory keeps the export and the log.
        shutil.rmtree(out, ignore_errors=True)
        log.info("job succeeded", extra={"fields": {"job_id": job_id, "version": version}})
    except _Cancelled:
        log.info("job was cancelled; stopping", extra={"fields": {"job_id": job_id}})
    except Exception as exc:
        reason = failure_reason(exc)
        log.error("job failed: %s", reason, extra={"fields": {"job_id": job_id}})
        try:
            with db.sessions.begin() as session:
                jobs.transition(session, job_id, jobs.FAILED, failure_reason=reason)
        except ClinAlignError:
            pass  # cancelled meanwhile: the cancellation stands


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m clinalign.trainer.worker <job-id>", file=sys.stderr)
        return 2
    common, settings = CommonSettings(), TrainerSettings()
    configure_logging("trainer-worker", common.log_level)
    url = settings.database_url or default_sqlite_url(common.data_dir, "trainer")
    db = Database(url, registry.Base)
    try:
        run_job(db, common, args[0])
    finally:
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
