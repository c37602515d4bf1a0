"""gRPC surface of the generation service: validate → domain → engine → protobuf."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from clinalign.common.auth import ALL_ROLES, Role, roles
from clinalign.common.errors import InvalidArgument
from clinalign.common.v1 import common_pb2
from clinalign.generation.config import GenerationSettings
from clinalign.generation.engine import EOS, LENGTH, STOP, Generated, LocalEngine
from clinalign.generation.params import validate_sampling
from clinalign.generation.reporter import MonitorReporter
from clinalign.generation.v1 import generation_pb2, generation_pb2_grpc
from clinalign.monitor.v1 import monitor_pb2

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

NOTICE = (
    "AI-generated draft for review by a licensed clinician; not medical advice and not "
    "part of the record until a clinician approves it."
)
_FINISH = {
    EOS: generation_pb2.FINISH_REASON_EOS,
    LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    STOP: generation_pb2.FINISH_REASON_STOP_SEQUENCE,
}


def _prompt_of(request: generation_pb2.GenerateRequest, max_chars: int) -> str:
    if not request.HasField("input"):
        raise InvalidArgument("input", "is required: set input.prompt or input.fhir")
    source = request.input.WhichOneof("source")
    if source == "fhir":
        raise InvalidArgument("input.fhir", "structured FHIR input is not supported yet")
    prompt = request.input.prompt
    if source is None or not prompt.strip():
        raise InvalidArgument("input.prompt", "must not be empty")
    if len(prompt) > max_chars:
        raise InvalidArgument("input.prompt", f"is {len(prompt)} characters; at most {max_chars}")
    return prompt


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    """Generate and ListModels are live; streaming, candidates, FHIR templates, batching
    and hot model switching arrive with the generation issue."""

    def __init__(
        self, settings: GenerationSettings, engine: LocalEngine, reporter: MonitorReporter | None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.reporter = reporter

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateResponse:
        prompt = _prompt_of(request, self.settings.max_prompt_chars)
        s = request.sampling
        sampling = validate_sampling(
            temperature=s.temperature if s.HasField("temperature") else None,
            top_p=s.top_p if s.HasField("top_p") else None,
            top_k=s.top_k if s.HasField("top_k") else None,
            max_new_tokens=s.max_new_tokens if s.HasField("max_new_tokens") else None,
            stop=list(s.stop),
            seed=s.seed if s.HasField("seed") else None,
            default_max_new_tokens=self.settings.default_max_new_tokens,
            max_new_tokens_limit=self.settings.max_new_tokens_limit,
        )
        result = await self.engine.generate(prompt, sampling)
        completion = self._completion(result)
        self._report(prompt, result, completion)
        return generation_pb2.GenerateResponse(completion=completion)

    async def ListModels(
        self, request: generation_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListModelsResponse:
        loaded = self.engine.loaded
        if loaded is None:
            return generation_pb2.ListModelsResponse()
        model = common_pb2.ModelVersion(
            ref=common_pb2.ModelRef(name=loaded.name, version=loaded.version),
            kind=common_pb2.MODEL_KIND_POLICY,
            stage=common_pb2.MODEL_STAGE_SERVING,
            artifact_uri=str(loaded.path),
            weights_hash=loaded.weights_hash,
        )
        return generation_pb2.ListModelsResponse(
            models=[generation_pb2.ServedModel(model=model, traffic_fraction=1.0)]
        )

    def _completion(self, result: Generated) -> generation_pb2.Completion:
        now = Timestamp()
        now.GetCurrentTime()
        return generation_pb2.Completion(
            text=result.text,
            finish_reason=_FINISH[result.finish_reason],
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            provenance=common_pb2.Provenance(
                output_id=f"out-{uuid.uuid4().hex}",
                model_name=result.model.name,
                model_version=result.model.version,
                weights_hash=result.model.weights_hash,
                prompt_template_version="",
                notice=NOTICE,
                create_time=now,
            ),
        )

    def _report(
        self, prompt: str, result: Generated, completion: generation_pb2.Completion
    ) -> None:
        if self.reporter is None:
            return
        self.reporter.submit(
            monitor_pb2.ProductionOutput(
                output_id=completion.provenance.output_id,
                prompt=prompt,
                text=result.text,
                model_version=result.model.version,
                prompt_template_version=completion.provenance.prompt_template_version,
                latency_s=result.duration_s,
                completion_tokens=result.completion_tokens,
                create_time=completion.provenance.create_time,
            )
        )
