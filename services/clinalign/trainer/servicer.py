"""gRPC surface of the trainer: converts protobuf ↔ domain and calls the registry, the job
store and the executor."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc.aio
from google.protobuf import json_format
from sqlalchemy.orm import Session

from clinalign.common.auth import ALL_ROLES, Role, roles
from clinalign.common.context import current_principal
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.pagination import next_token, page_bounds
from clinalign.common.protos import KIND_FROM_PROTO, KIND_TO_PROTO, STAGE_TO_PROTO, timestamp
from clinalign.common.v1 import common_pb2
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs import ppo_job, supervised
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.jobs.executor import Executors
from clinalign.trainer.registry import gate
from clinalign.trainer.registry.policy_gate import PolicyScorer
from clinalign.trainer.registry.versions import ModelVersion, Registry
from clinalign.trainer.v1 import trainer_pb2, trainer_pb2_grpc

_SVC = "/clinalign.trainer.v1.TrainerService/"
_JOBS = roles(Role.ML_ENGINEER, Role.SERVICE)
ROLES: Mapping[str, frozenset[Role]] = {
    _SVC + "SubmitJob": _JOBS,
    _SVC + "GetJob": _JOBS,
    _SVC + "ListJobs": _JOBS,
    _SVC + "CancelJob": _JOBS,
    _SVC + "WatchJob": _JOBS,
    _SVC + "ListModelVersions": ALL_ROLES,
    _SVC + "GetModelVersion": ALL_ROLES,
    _SVC + "RegisterModel": roles(Role.ML_ENGINEER),
    _SVC + "PromoteModel": _JOBS,
    _SVC + "RollbackModel": roles(Role.ML_ENGINEER),
}


KIND_TO_PROTO_JOB = {
    "sft": trainer_pb2.JOB_KIND_SFT,
    "reward_model": trainer_pb2.JOB_KIND_REWARD_MODEL,
    "ppo": trainer_pb2.JOB_KIND_PPO,
    "dpo": trainer_pb2.JOB_KIND_DPO,
}
KIND_FROM_PROTO_JOB: dict[int, str] = {v: k for k, v in KIND_TO_PROTO_JOB.items()}
STATE_TO_PROTO = {
    jobs.QUEUED: trainer_pb2.JOB_STATE_QUEUED,
    jobs.RUNNING: trainer_pb2.JOB_STATE_RUNNING,
    jobs.SUCCEEDED: trainer_pb2.JOB_STATE_SUCCEEDED,
    jobs.FAILED: trainer_pb2.JOB_STATE_FAILED,
    jobs.CANCELLED: trainer_pb2.JOB_STATE_CANCELLED,
}
STATE_FROM_PROTO: dict[int, str] = {v: k for k, v in STATE_TO_PROTO.items()}
EXECUTOR_TO_PROTO = {
    "local": trainer_pb2.EXECUTOR_KIND_LOCAL,
    "kubernetes": trainer_pb2.EXECUTOR_KIND_KUBERNETES,
}
EXECUTOR_FROM_PROTO: dict[int, str] = {v: k for k, v in EXECUTOR_TO_PROTO.items()}
# How each runnable kind checks its spec and resolves its inputs at submission.
_SPEC_CHECKS: dict[str, Callable[[Session, dict[str, Any]], dict[str, Any]]] = {
    "reward_model": supervised.check_reward_model_spec,
    "sft": supervised.check_sft_spec,
    "dpo": supervised.check_dpo_spec,
    "ppo": ppo_job.check_ppo_spec,
}


def job_to_proto(job: jobs.Job) -> trainer_pb2.Job:
    out = trainer_pb2.Job(
        id=job.id,
        spec=json_format.ParseDict(job.spec, trainer_pb2.JobSpec()),
        state=STATE_TO_PROTO[job.state],
        step=job.step,
        total_steps=job.total_steps,
        metrics=job.metrics,
        failure_reason=job.failure_reason,
        model_version=job.model_version,
        report_uri=job.report_uri,
        executor=EXECUTOR_TO_PROTO[job.executor],
        create_time=timestamp(job.created_at),
    )
    if job.started_at is not None:
        out.start_time.CopyFrom(timestamp(job.started_at))
    if job.ended_at is not None:
        out.end_time.CopyFrom(timestamp(job.ended_at))
    return out


def _job_kind(value: int) -> str:
    kind = KIND_FROM_PROTO_JOB.get(value)
    if kind is None:
        names = ", ".join(trainer_pb2.JobKind.Name(v) for v in KIND_TO_PROTO_JOB.values())
        raise InvalidArgument("spec.kind", f"is required: one of {names}")
    return kind


def version_to_proto(mv: ModelVersion) -> common_pb2.ModelVersion:
    return common_pb2.ModelVersion(
        ref=common_pb2.ModelRef(name=mv.name, version=mv.version),
        kind=KIND_TO_PROTO[mv.kind],
        stage=STAGE_TO_PROTO[mv.stage],
        base_model=mv.base_model,
        adapter_path=mv.adapter_path,
        artifact_uri=mv.artifact_uri,
        weights_hash=mv.weights_hash,
        parent_version=mv.parent_version,
        snapshot_hash=mv.snapshot_hash,
        job_id=mv.job_id,
        metrics=mv.metrics,
        create_time=timestamp(mv.created_at),
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Registry, job, promotion and rollback RPCs. ``fetch_snapshot`` reads a preference
    snapshot for the promotion gate; without one, PromoteModel fails its precondition."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        executor: Executors,
        settings: TrainerSettings,
        fetch_snapshot: gate.SnapshotFetcher | None = None,
        score: PolicyScorer | None = None,
    ) -> None:
        self.db = db
        self.registry = registry
        self.executor = executor
        self.settings = settings
        self.fetch_snapshot = fetch_snapshot
        self.score = score

    async def SubmitJob(
        self, request: trainer_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.SubmitJobResponse:
        spec = request.spec
        key = spec.idempotency_key
        if key:
            found = await self.db.run_sync(lambda s: jobs.find_by_key(s, key))
            if found is not None:
                return trainer_pb2.SubmitJobResponse(job=job_to_proto(found), replayed=True)
        kind = _job_kind(spec.kind)
        executor = EXECUTOR_FROM_PROTO.get(int(spec.executor), str(self.settings.executor))
        if not self.executor.runs(executor):
            raise FailedPrecondition(
                f"spec.executor: the {executor} executor is not available yet on this "
                "trainer: set CLINALIGN_TRAINER_KUBERNETES_ENABLED=true and its "
                "CLINALIGN_TRAINER_KUBERNETES_* settings, or use EXECUTOR_KIND_LOCAL"
            )
        as_dict = json_format.MessageToDict(spec, preserving_proto_field_name=True)
        check = _SPEC_CHECKS[kind]
        inputs = await self.db.run_sync(lambda s: check(s, as_dict))
        job, replayed = await self.db.run_write(
            lambda s: jobs.submit(s, kind, executor, as_dict, inputs, key)
        )
        if not replayed:
            await self.executor.kick()
            job = await self.db.run_sync(lambda s: jobs.get(s, job.id))
        return trainer_pb2.SubmitJobResponse(job=job_to_proto(job), replayed=replayed)

    async def GetJob(
        self, request: trainer_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetJobResponse:
        if not request.id:
            raise InvalidArgument("id", "is required")
        job = await self.db.run_sync(lambda s: jobs.get(s, request.id))
        return trainer_pb2.GetJobResponse(job=job_to_proto(job))

    async def ListJobs(
        self, request: trainer_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.ListJobsResponse:
        limit, offset = page_bounds(request.page_size, request.page_token)
        states = [STATE_FROM_PROTO.get(v) for v in request.states]
        kinds = [KIND_FROM_PROTO_JOB.get(v) for v in request.kinds]
        if None in states:
            raise InvalidArgument("states", "holds an unknown or unspecified job state")
        if None in kinds:
            raise InvalidArgument("kinds", "holds an unknown or unspecified job kind")
        found = await self.db.run_sync(
            lambda s: jobs.list_jobs(
                s, [x for x in states if x], [x for x in kinds if x], limit, offset
            )
        )
        return trainer_pb2.ListJobsResponse(
            jobs=[job_to_proto(j) for j in found],
            next_page_token=next_token(offset, limit, len(found)),
        )

    async def CancelJob(
        self, request: trainer_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.CancelJobResponse:
        if not request.id:
            raise InvalidArgument("id", "is required")
        job = await self.executor.cancel(request.id)
        return trainer_pb2.CancelJobResponse(job=job_to_proto(job))

    async def WatchJob(
        self, request: trainer_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.WatchJobResponse]:
        if not request.id:
            raise InvalidArgument("id", "is required")
        async for job, step_metrics in jobs.watch(self.db, request.id, self.settings.watch_poll_s):
            yield trainer_pb2.WatchJobResponse(job=job_to_proto(job), step_metrics=step_metrics)

    async def RegisterModel(
        self, request: trainer_pb2.RegisterModelRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.RegisterModelResponse:
        if not request.path:
            raise InvalidArgument("path", "is required: a model directory readable by the trainer")
        kind = KIND_FROM_PROTO.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind", "must be MODEL_KIND_POLICY or MODEL_KIND_REWARD")
        path = Path(request.path)
        version = await self.db.run_sync(
            lambda s: self.registry.register(s, path, kind, serve_if_none=request.serve_if_none)
        )
        return trainer_pb2.RegisterModelResponse(version=version_to_proto(version))

    async def GetModelVersion(
        self, request: trainer_pb2.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetModelVersionResponse:
        if not request.version:
            raise InvalidArgument("version", "is required")
        mv = await self.db.run_sync(lambda s: self.registry.get(s, request.version))
        return trainer_pb2.GetModelVersionResponse(
            version=version_to_proto(mv), manifest_json=json.dumps(mv.manifest)
        )

    async def ListModelVersions(
        self, request: trainer_pb2.ListModelVersionsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.ListModelVersionsResponse:
        limit, offset = page_bounds(request.page_size, request.page_token)
        kind = KIND_FROM_PROTO.get(request.kind)
        if request.kind and kind is None:
            raise InvalidArgument("kind", f"unknown model kind {request.kind}")
        versions = await self.db.run_sync(lambda s: self.registry.list(s, kind, limit, offset))
        return trainer_pb2.ListModelVersionsResponse(
            versions=[version_to_proto(v) for v in versions],
            next_page_token=next_token(offset, limit, len(versions)),
        )

    async def PromoteModel(
        self, request: trainer_pb2.PromoteModelRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.PromoteModelResponse:
        if not request.version:
            raise InvalidArgument("version", "is required: the registry version to promote")
        principal = current_principal()
        decision = await gate.promote(
            self.db,
            self.registry,
            request.version,
            self.fetch_snapshot,
            principal=principal.name if principal else "",
            score=self.score,
            policy_settings=self.settings.policy_gate,
        )
        return trainer_pb2.PromoteModelResponse(
            promoted=decision.promoted,
            checks=[
                trainer_pb2.GateCheck(
                    name=c.name,
                    value=c.value,
                    threshold=c.threshold,
                    passed=c.passed,
                    message=c.message,
                )
                for c in decision.checks
            ],
            version=version_to_proto(decision.version),
        )

    async def RollbackModel(
        self, request: trainer_pb2.RollbackModelRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.RollbackModelResponse:
        kind = KIND_FROM_PROTO.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind", "must be MODEL_KIND_POLICY or MODEL_KIND_REWARD")
        version = await self.db.run_write(lambda s: self.registry.rollback(s, kind))
        return trainer_pb2.RollbackModelResponse(version=version_to_proto(version))
