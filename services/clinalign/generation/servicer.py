"""gRPC surface of the generation service: each RPC converts its request (``convert``),
makes one call into the use cases (``usecases.Generation``) and converts the result back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import grpc.aio

from clinalign.common.auth import ALL_ROLES, ANY_SERVICE, Role, ServiceCallers, roles
from clinalign.generation.convert import (
    candidates_from_proto,
    completion_to_proto,
    request_from_proto,
    served_to_proto,
    stream_event_to_proto,
)
from clinalign.generation.usecases import Generation
from clinalign.generation.v1 import generation_pb2, generation_pb2_grpc

_SVC = "/clinalign.generation.v1.GenerationService/"
_SERVE = roles(Role.EHR_CLIENT, Role.SERVICE)
_OPERATE = roles(Role.SERVICE, Role.ML_ENGINEER)
ROLES: Mapping[str, frozenset[Role]] = {
    _SVC + "Generate": _SERVE,
    _SVC + "GenerateStream": _SERVE,
    _SVC + "GenerateCandidates": _OPERATE,
    _SVC + "ListModels": ALL_ROLES,
    _SVC + "ActivateModel": _OPERATE,
}

# Which ClinAlign services' own credentials may call the RPCs role service may call
# (clinalign.common.auth.authorize): the monitor drafts candidates for a flag's task and
# activates versions in a retraining run. Generate is for EHR systems and front doors.
SERVICE_CALLERS: ServiceCallers = {
    _SVC + "Generate": frozenset(),
    _SVC + "GenerateStream": frozenset(),
    _SVC + "GenerateCandidates": frozenset({"monitor"}),
    _SVC + "ListModels": ANY_SERVICE,
    _SVC + "ActivateModel": frozenset({"monitor"}),
}


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, generation: Generation) -> None:
        self.generation = generation

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateResponse:
        draft = await self.generation.generate(request_from_proto(request))
        return generation_pb2.GenerateResponse(completion=completion_to_proto(draft))

    async def GenerateStream(
        self, request: generation_pb2.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        # Closing the use case's iterator when the caller goes away stops the generation.
        events = self.generation.generate_stream(request_from_proto(request))
        async with contextlib.aclosing(events):
            async for event in events:
                yield stream_event_to_proto(event)

    async def GenerateCandidates(
        self, request: generation_pb2.GenerateCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateCandidatesResponse:
        drafts = await self.generation.generate_candidates(candidates_from_proto(request))
        return generation_pb2.GenerateCandidatesResponse(
            candidates=[completion_to_proto(d) for d in drafts]
        )

    async def ListModels(
        self, request: generation_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListModelsResponse:
        return generation_pb2.ListModelsResponse(
            models=served_to_proto(self.generation.list_models())
        )

    async def ActivateModel(
        self, request: generation_pb2.ActivateModelRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ActivateModelResponse:
        served = await self.generation.activate_model(
            request.version, request.canary_version, request.canary_fraction
        )
        return generation_pb2.ActivateModelResponse(models=served_to_proto(served))
