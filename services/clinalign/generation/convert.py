"""Conversions between the generation service's protobuf messages and its domain types
(no validation: that is the use cases' job, ``usecases``)."""

from __future__ import annotations

from clinalign.common.protos import timestamp
from clinalign.common.v1 import common_pb2
from clinalign.generation.backend import EOS, LENGTH, STOP, Delta
from clinalign.generation.drafts import Draft
from clinalign.generation.params import SamplingRequest
from clinalign.generation.router import Served
from clinalign.generation.usecases import CandidatesRequest, FhirInput, Request, Source
from clinalign.generation.v1 import generation_pb2 as pb

_FINISH = {
    EOS: pb.FINISH_REASON_EOS,
    LENGTH: pb.FINISH_REASON_LENGTH,
    STOP: pb.FINISH_REASON_STOP_SEQUENCE,
}
_TASKS = {
    pb.CLINICAL_TASK_PATIENT_QUESTION: "patient_question",
    pb.CLINICAL_TASK_SUMMARY: "summary",
    pb.CLINICAL_TASK_DISCHARGE_INSTRUCTIONS: "discharge_instructions",
}


def source_from_proto(has_input: bool, source: pb.GenerationInput) -> Source:
    which = source.WhichOneof("source") if has_input else None
    if which == "fhir":
        f = source.fhir
        return FhirInput(f.bundle_json, _TASKS.get(f.task), f.question, f.template_version)
    if which == "prompt":
        return source.prompt
    return None


def sampling_from_proto(s: pb.SamplingParams) -> SamplingRequest:
    return SamplingRequest(
        temperature=s.temperature if s.HasField("temperature") else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        top_k=s.top_k if s.HasField("top_k") else None,
        max_new_tokens=s.max_new_tokens if s.HasField("max_new_tokens") else None,
        stop=tuple(s.stop),
        seed=s.seed if s.HasField("seed") else None,
    )


def request_from_proto(req: pb.GenerateRequest | pb.GenerateStreamRequest) -> Request:
    return Request(
        source_from_proto(req.HasField("input"), req.input), sampling_from_proto(req.sampling)
    )


def candidates_from_proto(req: pb.GenerateCandidatesRequest) -> CandidatesRequest:
    return CandidatesRequest(
        source_from_proto(req.HasField("input"), req.input),
        n=req.n,
        sampling=sampling_from_proto(req.sampling),
        model_versions=tuple(req.model_versions),
    )


def completion_to_proto(draft: Draft) -> pb.Completion:
    result = draft.result
    return pb.Completion(
        text=result.text,
        finish_reason=_FINISH[result.finish_reason],
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        provenance=common_pb2.Provenance(
            output_id=draft.output_id,
            model_name=result.model.name,
            model_version=result.model.version,
            weights_hash=result.model.weights_hash,
            prompt_template_version=draft.message.template_version,
            notice=draft.notice,
            create_time=timestamp(draft.created),
        ),
    )


def stream_event_to_proto(event: Delta | Draft) -> pb.GenerateStreamResponse:
    """A delta, or the last message: the completion with its token count."""
    if isinstance(event, Delta):
        return pb.GenerateStreamResponse(
            text_delta=event.text, completion_tokens=event.completion_tokens
        )
    return pb.GenerateStreamResponse(
        completion_tokens=event.result.completion_tokens, completion=completion_to_proto(event)
    )


def served_to_proto(served: list[Served]) -> list[pb.ServedModel]:
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
        out.append(pb.ServedModel(model=model, traffic_fraction=s.traffic_fraction))
    return out
