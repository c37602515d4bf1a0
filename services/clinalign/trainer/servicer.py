"""gRPC surface of the trainer: each RPC converts its request (``convert``), makes one call
into the use cases (``usecases.Trainer``) and converts the result back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import grpc.aio
from google.protobuf import json_format

from clinalign.common.auth import ALL_ROLES, Role, ServiceCallers, roles
from clinalign.common.context import principal_name
from clinalign.common.protos import KIND_FROM_PROTO
from clinalign.common.v1 import common_pb2
from clinalign.trainer.convert import (
    EXECUTOR_FROM_PROTO,
    KIND_FROM_PROTO_JOB,
    STATE_FROM_PROTO,
    gate_checks_to_proto,
    gate_decision_to_proto,
    job_to_proto,
    serving_change_to_proto,
    serving_state_to_proto,
    version_to_proto,
)
from clinalign.trainer.usecases import Trainer
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
    _SVC + "GetServingState": ALL_ROLES,
    _SVC + "WatchServingState": ALL_ROLES,
}

# Which ClinAlign services' own credentials may call the RPCs role service may call: the
# monitor runs retraining (jobs, snapshots' models, promotion); the serving replicas
# follow the registry; the CDS Hooks gateway reads a version's model card.
SERVICE_CALLERS: ServiceCallers = {
    _SVC + "SubmitJob": frozenset({"monitor"}),
    _SVC + "GetJob": frozenset({"monitor"}),
    _SVC + "ListJobs": frozenset(),
    _SVC + "CancelJob": frozenset(),
    _SVC + "WatchJob": frozenset({"monitor"}),
    _SVC + "ListModelVersions": frozenset({"monitor"}),
    _SVC + "GetModelVersion": frozenset(
        {"generation", "reward", "monitor", "trainer-job", "cds-hooks"}
    ),
    _SVC + "PromoteModel": frozenset({"monitor"}),
    _SVC + "GetServingState": frozenset({"generation", "reward", "monitor"}),
    _SVC + "WatchServingState": frozenset({"generation", "reward", "monitor"}),
}


def _principal() -> str:
    principal = principal_name()
    return "" if principal == "anonymous" else principal


def _model_kind(value: common_pb2.ModelKind.ValueType) -> str:
    """A ModelKind as the registry names it; "" for a value that names none."""
    return KIND_FROM_PROTO.get(value, "")


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Job, registry, promotion and rollback RPCs."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    async def SubmitJob(
        self, request: trainer_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.SubmitJobResponse:
        spec = request.spec
        job, replayed = await self.trainer.submit_job(
            KIND_FROM_PROTO_JOB.get(spec.kind, ""),
            EXECUTOR_FROM_PROTO.get(int(spec.executor), ""),
            json_format.MessageToDict(spec, preserving_proto_field_name=True),
            spec.idempotency_key,
            _principal(),
        )
        return trainer_pb2.SubmitJobResponse(job=job_to_proto(job), replayed=replayed)

    async def GetJob(
        self, request: trainer_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetJobResponse:
        job = await self.trainer.get_job(request.id)
        return trainer_pb2.GetJobResponse(job=job_to_proto(job))

    async def ListJobs(
        self, request: trainer_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.ListJobsResponse:
        found, token = await self.trainer.list_jobs(
            [STATE_FROM_PROTO.get(v) for v in request.states],
            [KIND_FROM_PROTO_JOB.get(v) for v in request.kinds],
            request.page_size,
            request.page_token,
        )
        return trainer_pb2.ListJobsResponse(
            jobs=[job_to_proto(j) for j in found], next_page_token=token
        )

    async def CancelJob(
        self, request: trainer_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.CancelJobResponse:
        job = await self.trainer.cancel_job(request.id)
        return trainer_pb2.CancelJobResponse(job=job_to_proto(job))

    async def WatchJob(
        self, request: trainer_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.WatchJobResponse]:
        async for job, step_metrics in self.trainer.watch_job(request.id):
            yield trainer_pb2.WatchJobResponse(job=job_to_proto(job), step_metrics=step_metrics)

    async def RegisterModel(
        self, request: trainer_pb2.RegisterModelRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.RegisterModelResponse:
        version = await self.trainer.register_model(
            request.path, _model_kind(request.kind), request.serve_if_none
        )
        return trainer_pb2.RegisterModelResponse(version=version_to_proto(version))

    async def GetModelVersion(
        self, request: trainer_pb2.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetModelVersionResponse:
        mv, manifest_json, decisions = await self.trainer.get_model_version(request.version)
        return trainer_pb2.GetModelVersionResponse(
            version=version_to_proto(mv),
            manifest_json=manifest_json,
            decisions=[gate_decision_to_proto(d) for d in decisions],
        )

    async def ListModelVersions(
        self, request: trainer_pb2.ListModelVersionsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.ListModelVersionsResponse:
        kind = KIND_FROM_PROTO.get(request.kind, str(request.kind)) if request.kind else None
        versions, token = await self.trainer.list_model_versions(
            kind, request.page_size, request.page_token
        )
        return trainer_pb2.ListModelVersionsResponse(
            versions=[version_to_proto(v) for v in versions], next_page_token=token
        )

    async def PromoteModel(
        self, request: trainer_pb2.PromoteModelRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.PromoteModelResponse:
        decision = await self.trainer.promote_model(
            request.version, _principal(), request.canary_share, request.reason
        )
        return trainer_pb2.PromoteModelResponse(
            promoted=decision.promoted,
            checks=gate_checks_to_proto(decision),
            version=version_to_proto(decision.version),
        )

    async def RollbackModel(
        self, request: trainer_pb2.RollbackModelRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.RollbackModelResponse:
        version = await self.trainer.rollback_model(
            _model_kind(request.kind), _principal(), request.reason
        )
        return trainer_pb2.RollbackModelResponse(version=version_to_proto(version))

    async def GetServingState(
        self, request: trainer_pb2.GetServingStateRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetServingStateResponse:
        snapshot = await self.trainer.serving_state(request.history_limit)
        return trainer_pb2.GetServingStateResponse(
            states=[serving_state_to_proto(s) for s in snapshot.states],
            history=[serving_change_to_proto(c) for c in snapshot.history],
            revision=snapshot.revision,
        )

    async def WatchServingState(
        self, request: trainer_pb2.WatchServingStateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.WatchServingStateResponse]:
        async for snapshot in self.trainer.watch_serving_state():
            yield trainer_pb2.WatchServingStateResponse(
                states=[serving_state_to_proto(s) for s in snapshot.states],
                revision=snapshot.revision,
            )
