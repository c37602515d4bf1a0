"""gRPC surface of the trainer: converts protobuf ↔ domain and calls the registry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import grpc.aio

from clinalign.common.auth import ALL_ROLES, Role, roles
from clinalign.common.db import Database
from clinalign.common.errors import InvalidArgument
from clinalign.common.pagination import next_token, page_bounds
from clinalign.common.protos import KIND_FROM_PROTO, KIND_TO_PROTO, STAGE_TO_PROTO, timestamp
from clinalign.common.v1 import common_pb2
from clinalign.trainer.registry import ModelVersion, Registry
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
    """Registry RPCs are live; job RPCs answer UNIMPLEMENTED until the jobs issue lands."""

    def __init__(self, db: Database, registry: Registry) -> None:
        self.db = db
        self.registry = registry

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
