"""gRPC surface of the generation service: validate → domain → backend → protobuf."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from clinalign.common.auth import ALL_ROLES, Role, roles
from clinalign.common.errors import InvalidArgument
from clinalign.common.v1 import common_pb2
from clinalign.generation import fhir, metrics
from clinalign.generation.backend import (
    EOS,
    LENGTH,
    STOP,
    Backend,
    Delta,
    Generated,
    collect,
)
from clinalign.generation.config import GenerationSettings
from clinalign.generation.params import Sampling, validate_sampling
from clinalign.generation.reporter import MonitorReporter
from clinalign.generation.router import Router, Served
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
_TASKS = {
    generation_pb2.CLINICAL_TASK_PATIENT_QUESTION: "patient_question",
    generation_pb2.CLINICAL_TASK_SUMMARY: "summary",
    generation_pb2.CLINICAL_TASK_DISCHARGE_INSTRUCTIONS: "discharge_instructions",
}
MIN_CANDIDATES, MAX_CANDIDATES, MAX_CANDIDATE_VERSIONS = 2, 16, 2


@dataclass(frozen=True)
class UserMessage:
    """What the model is asked, and the template version that rendered it ("" for raw)."""

    text: str
    template_version: str = ""


def user_message(
    has_input: bool, source: generation_pb2.GenerationInput, max_chars: int
) -> UserMessage:
    if not has_input or source.WhichOneof("source") is None:
        raise InvalidArgument("input", "is required: set input.prompt or input.fhir")
    if source.WhichOneof("source") == "fhir":
        f = source.fhir
        task = _TASKS.get(f.task)
        if task is None:
            raise InvalidArgument(
                "input.fhir.task",
                "is required: CLINICAL_TASK_PATIENT_QUESTION, _SUMMARY or _DISCHARGE_INSTRUCTIONS",
            )
        rendered = fhir.render(
            f.bundle_json, task, f.question, f.template_version, max_chars=max_chars
        )
        return UserMessage(rendered.text, rendered.template_version)
    prompt = source.prompt
    if not prompt.strip():
        raise InvalidArgument("input.prompt", "must not be empty")
    if len(prompt) > max_chars:
        raise InvalidArgument("input.prompt", f"is {len(prompt)} characters; at most {max_chars}")
    return UserMessage(prompt)


def sampling_of(s: generation_pb2.SamplingParams, settings: GenerationSettings) -> Sampling:
    return validate_sampling(
        temperature=s.temperature if s.HasField("temperature") else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        top_k=s.top_k if s.HasField("top_k") else None,
        max_new_tokens=s.max_new_tokens if s.HasField("max_new_tokens") else None,
        stop=list(s.stop),
        seed=s.seed if s.HasField("seed") else None,
        default_max_new_tokens=settings.default_max_new_tokens,
        max_new_tokens_limit=settings.max_new_tokens_limit,
    )


def served_pb(served: list[Served]) -> list[generation_pb2.ServedModel]:
    out = []
    for s in served:
        model = common_pb2.ModelVersion(
            ref=common_pb2.ModelRef(name=s.info.name, version=s.info.version),
            kind=common_pb2.MODEL_KIND_POLICY,
            stage=common_pb2.MODEL_STAGE_SERVING,
            base_model=s.info.base_model,
            adapter_path=s.info.adapter_path,
            artifact_uri=s.info.uri,
            weights_hash=s.info.weights_hash,
        )
        out.append(generation_pb2.ServedModel(model=model, traffic_fraction=s.traffic_fraction))
    return out


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(
        self, settings: GenerationSettings, router: Router, reporter: MonitorReporter | None
    ) -> None:
        self.settings = settings
        self.router = router
        self.reporter = reporter

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateResponse:
        message = user_message(
            request.HasField("input"), request.input, self.settings.max_prompt_chars
        )
        sampling = sampling_of(request.sampling, self.settings)
        result = await _run(self.router.pick(), message, sampling)
        completion = _completion(result, message)
        self._report(message, result, completion)
        return generation_pb2.GenerateResponse(completion=completion)

    async def GenerateStream(
        self, request: generation_pb2.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        message = user_message(
            request.HasField("input"), request.input, self.settings.max_prompt_chars
        )
        sampling = sampling_of(request.sampling, self.settings)
        async with contextlib.aclosing(self.router.pick().stream(message.text, sampling)) as events:
            async for event in events:
                if isinstance(event, Delta):
                    yield generation_pb2.GenerateStreamResponse(
                        text_delta=event.text, completion_tokens=event.completion_tokens
                    )
                    continue
                assert isinstance(event, Generated)
                metrics.observe(event)
                completion = _completion(event, message)
                self._report(message, event, completion)
                yield generation_pb2.GenerateStreamResponse(
                    completion_tokens=event.completion_tokens, completion=completion
                )

    async def GenerateCandidates(
        self, request: generation_pb2.GenerateCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateCandidatesResponse:
        message = user_message(
            request.HasField("input"), request.input, self.settings.max_prompt_chars
        )
        if not MIN_CANDIDATES <= request.n <= MAX_CANDIDATES:
            raise InvalidArgument(
                "n", f"must be in [{MIN_CANDIDATES}, {MAX_CANDIDATES}], got {request.n}"
            )
        if request.sampling.HasField("temperature") and request.sampling.temperature == 0:
            raise InvalidArgument(
                "sampling.temperature", "must be above 0: greedy candidates would be identical"
            )
        sampling = sampling_of(request.sampling, self.settings)
        versions = list(request.model_versions)
        if len(versions) > MAX_CANDIDATE_VERSIONS:
            raise InvalidArgument("model_versions", f"at most {MAX_CANDIDATE_VERSIONS} versions")
        if len(set(versions)) != len(versions) or any(not v for v in versions):
            raise InvalidArgument("model_versions", "must be distinct, non-empty versions")
        backends = [await self.router.backend(v) for v in versions] or [self.router.pick()]
        jobs = []
        for i in range(request.n):
            seed = None if sampling.seed is None else sampling.seed + i
            one = Sampling(**{**sampling.__dict__, "seed": seed})
            jobs.append(_run(backends[i % len(backends)], message, one))
        results = await asyncio.gather(*jobs)
        # Candidates feed comparison tasks, not patients, so they are not production
        # outputs and are not reported to the monitor.
        return generation_pb2.GenerateCandidatesResponse(
            candidates=[_completion(r, message) for r in results]
        )

    async def ListModels(
        self, request: generation_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListModelsResponse:
        return generation_pb2.ListModelsResponse(models=served_pb(self.router.served()))

    async def ActivateModel(
        self, request: generation_pb2.ActivateModelRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ActivateModelResponse:
        served = await self.router.activate(
            request.version, request.canary_version, request.canary_fraction
        )
        return generation_pb2.ActivateModelResponse(models=served_pb(served))

    def _report(
        self, message: UserMessage, result: Generated, completion: generation_pb2.Completion
    ) -> None:
        if self.reporter is None:
            return
        self.reporter.submit(
            monitor_pb2.ProductionOutput(
                output_id=completion.provenance.output_id,
                prompt=message.text,
                text=result.text,
                model_version=result.model.version,
                prompt_template_version=message.template_version,
                latency_s=result.duration_s,
                completion_tokens=result.completion_tokens,
                create_time=completion.provenance.create_time,
            )
        )


async def _run(backend: Backend, message: UserMessage, sampling: Sampling) -> Generated:
    result = await collect(backend.stream(message.text, sampling, deltas=False))
    metrics.observe(result)
    return result


def _completion(result: Generated, message: UserMessage) -> generation_pb2.Completion:
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
            prompt_template_version=message.template_version,
            notice=NOTICE,
            create_time=now,
        ),
    )
