"""Resolving a registry version through the trainer service, for the services that load
models on request (generation and reward ``ActivateModel``)."""

from __future__ import annotations

import grpc
import grpc.aio

from clinalign.common.channels import Clients
from clinalign.common.errors import InvalidArgument, NotFound, Unavailable
from clinalign.common.v1 import common_pb2
from clinalign.trainer.v1 import trainer_pb2

REGISTRY_TIMEOUT_S = 10.0
_KIND_NAMES = {
    common_pb2.MODEL_KIND_POLICY: "policy",
    common_pb2.MODEL_KIND_REWARD: "reward",
    common_pb2.MODEL_KIND_COST: "cost",
}


async def resolve_version(
    clients: Clients,
    version: str,
    kind: common_pb2.ModelKind.ValueType | tuple[common_pb2.ModelKind.ValueType, ...],
) -> common_pb2.ModelVersion:
    """The registry entry of version, which must be of kind (or one of the kinds);
    NOT_FOUND names the field ``version``, and a trainer that cannot answer is
    UNAVAILABLE."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    target = clients.settings.trainer_target
    try:
        reply = await clients.trainer.GetModelVersion(
            trainer_pb2.GetModelVersionRequest(version=version), timeout=REGISTRY_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound("model version", version, field="version") from None
        raise Unavailable(
            f"model registry (trainer service at {target}) failed: {err.code().name}"
        ) from None
    if reply.version.kind not in kinds:
        wanted = " or ".join(_KIND_NAMES[k] for k in kinds)
        raise InvalidArgument("version", f"{version} is not a {wanted} model")
    return reply.version
