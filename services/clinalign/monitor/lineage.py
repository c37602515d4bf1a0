"""Lineage: from one production output back to everything behind it.

The walk is a tree rooted at the output; each step's ``parent_id`` is the step it was
reached from, so a client can print it as a tree:

output → the model version that wrote it → the job that trained it → that job's inputs:
the snapshot (reward-model and DPO jobs; preference GetSnapshot) with the confirmed flags
a retraining run fed into it, the reward model (PPO jobs; its own version, job and
snapshot in turn) and the parent policy version → ... → the foundation model, a version
with no job and no parent. The output's own flags hang off the output.

Summaries name versions, ids, counts and times, never patient text. A version the
registry does not know (or a snapshot the store no longer has) ends its branch with a
step saying so rather than failing the walk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from sqlalchemy import select
from sqlalchemy.orm import Session

from clinalign.common.db import Database
from clinalign.common.errors import NotFound, Unavailable
from clinalign.common.protos import enum_name
from clinalign.common.v1 import common_pb2
from clinalign.monitor import store
from clinalign.monitor.convert import category_name, severity_name
from clinalign.monitor.store import FeedbackRow, FlagRow, RunRow
from clinalign.monitor.v1 import monitor_pb2 as pb
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.trainer.v1 import trainer_pb2 as tpb

if TYPE_CHECKING:
    from clinalign.preference.v1.preference_pb2_grpc import PreferenceServiceAsyncStub
    from clinalign.trainer.v1.trainer_pb2_grpc import TrainerServiceAsyncStub

RPC_TIMEOUT_S = 30.0
MAX_STEPS = 500  # a registry that loops (it should not) still ends the walk


@dataclass(frozen=True)
class Step:
    kind: str  # output | model_version | job | snapshot | flag
    id: str
    summary: str
    parent_id: str


@dataclass(frozen=True)
class _Output:
    output_id: str
    model_version: str
    created_at: str
    flags: list[tuple[str, str]]  # (flag id, summary)


def _output(session: Session, output_id: str) -> _Output:

    row = store.get_output(session, output_id)
    if row is None:
        raise NotFound("output", output_id, field="output_id")
    flags = session.scalars(
        select(FlagRow).where(FlagRow.output_id == output_id).order_by(FlagRow.created_at)
    )
    return _Output(
        output_id=row.output_id,
        model_version=row.model_version,
        created_at=store.utc(row.created_at).isoformat(timespec="seconds"),
        flags=[(f.id, _flag_summary(f, category_name, severity_name)) for f in flags],
    )


def _flag_summary(f: FlagRow, category: Any, severity: Any) -> str:

    status = enum_name(pb.FlagStatus, pb.FlagStatus.ValueType(f.status), lower=False)
    return (
        f"{status.lower()} {category(f.category)} ({severity(f.severity)}) flag by "
        f"{f.flagged_by} on {f.model_version}"
    )


def _snapshot_flags(session: Session, snapshot_hash: str) -> list[tuple[str, str]]:
    """Flags retraining runs fed into the snapshot with this content hash."""

    runs = select(RunRow.id).where(RunRow.snapshot_hash == snapshot_hash)
    rows = session.execute(
        select(FlagRow, FeedbackRow)
        .join(FeedbackRow, FeedbackRow.flag_id == FlagRow.id)
        .where(FeedbackRow.run_id.in_(runs))
        .order_by(FlagRow.created_at, FlagRow.id)
    ).all()
    out = []
    for flag, fb in rows:
        made = f"correction {fb.correction_id}" if fb.correction_id else f"tasks {fb.task_ids}"
        out.append((flag.id, f"{_flag_summary(flag, category_name, severity_name)}; {made}"))
    return out


class Walk:
    """One lineage walk through the trainer and preference stubs."""

    def __init__(
        self, db: Database, trainer: TrainerServiceAsyncStub, preference: PreferenceServiceAsyncStub
    ) -> None:
        self.db = db
        self.trainer = trainer
        self.preference = preference
        self.steps: list[Step] = []
        self.seen: set[tuple[str, str]] = set()

    async def run(self, output_id: str) -> tuple[list[Step], common_pb2.ModelVersion | None]:
        """(steps, the output's ModelVersion proto or None)."""
        out = await self.db.run_sync(lambda s: _output(s, output_id))
        written = f"written by {out.model_version} at {out.created_at}"
        self._add("output", out.output_id, written, "")
        for flag_id, summary in out.flags:
            self._add("flag", flag_id, summary, out.output_id)
        model = await self._version(out.model_version, out.output_id)
        return self.steps, model

    def _add(self, kind: str, ident: str, summary: str, parent: str) -> bool:
        if (kind, ident) in self.seen or len(self.steps) >= MAX_STEPS:
            return False
        self.seen.add((kind, ident))
        self.steps.append(Step(kind, ident, summary, parent))
        return True

    async def _version(self, version: str, parent: str) -> Any:

        if ("model_version", version) in self.seen:
            return None
        try:
            reply = await self.trainer.GetModelVersion(
                tpb.GetModelVersionRequest(version=version), timeout=RPC_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise Unavailable(f"model registry failed: {err.code().name}") from None
            self._add("model_version", version, "not in the model registry", parent)
            return None
        mv, manifest = reply.version, _json(reply.manifest_json)
        kind = enum_name(common_pb2.ModelKind, mv.kind)
        stage = enum_name(common_pb2.ModelStage, mv.stage)
        root = not mv.job_id and not mv.parent_version
        what = "foundation model" if root and kind == "policy" else f"{kind} model"
        summary = f"{what}, {stage}, weights {mv.weights_hash[:12]}"
        if mv.snapshot_hash:
            summary += f", snapshot {mv.snapshot_hash[:12]}"
        if not self._add("model_version", version, summary, parent):
            return mv
        if mv.job_id:
            await self._job(mv.job_id, version, mv, manifest)
        else:
            if mv.snapshot_hash:
                await self._snapshot(mv.snapshot_hash, version)
            if mv.parent_version:
                await self._version(mv.parent_version, version)
        return mv

    async def _job(self, job_id: str, parent: str, mv: Any, manifest: dict[str, Any]) -> None:

        try:
            job = (
                await self.trainer.GetJob(tpb.GetJobRequest(id=job_id), timeout=RPC_TIMEOUT_S)
            ).job
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise Unavailable(f"trainer failed: {err.code().name}") from None
            self._add("job", job_id, "not known to the trainer", parent)
            return
        kind = enum_name(tpb.JobKind, job.spec.kind)
        state = enum_name(tpb.JobState, job.state)
        source = job.spec.prompt_set or job.spec.snapshot_id
        summary = f"{kind} job, {state}" + (f", on {source}" if source else "")
        if not self._add("job", job_id, summary, parent):
            return
        # The parent first, so a base shared with the reward model hangs off this job.
        if mv.parent_version:
            await self._version(mv.parent_version, job_id)
        if job.spec.snapshot_id:
            await self._snapshot(job.spec.snapshot_id, job_id)
        elif mv.snapshot_hash and manifest.get("snapshot_hash_source", "manifest") == "manifest":
            # an export file's hash names no snapshot in the store
            await self._snapshot(mv.snapshot_hash, job_id)
        reward = job.spec.reward_model_version or str(manifest.get("reward_model_version", ""))
        if reward:
            await self._version(reward, job_id)

    async def _snapshot(self, ident: str, parent: str) -> None:

        try:
            snap = (
                await self.preference.GetSnapshot(
                    ppb.GetSnapshotRequest(id=ident), timeout=RPC_TIMEOUT_S
                )
            ).snapshot
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise Unavailable(f"preference store failed: {err.code().name}") from None
            self._add("snapshot", ident, "not in the preference store", parent)
            return
        summary = (
            f"{snap.train_pairs} train and {snap.eval_pairs} eval pairs, "
            f"{snap.sft_records} sft records, hash {snap.content_hash[:12]}"
        )
        if not self._add("snapshot", snap.id, summary, parent):
            return
        flags = await self.db.run_sync(lambda s: _snapshot_flags(s, snap.content_hash))
        for flag_id, flag_summary in flags:
            self._add("flag", flag_id, flag_summary, snap.id)


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def walk(
    db: Database,
    trainer: TrainerServiceAsyncStub,
    preference: PreferenceServiceAsyncStub,
    output_id: str,
) -> tuple[list[Step], common_pb2.ModelVersion | None]:
    """The lineage of an output: (steps, its model version proto, or None if unknown)."""
    return await Walk(db, trainer, preference).run(output_id)
