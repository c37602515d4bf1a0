"""GenerationService through real gRPC on tiny models: streaming, FHIR input, candidates,
overload, deadlines and cancellation, and hot switching between registered versions
(full weights and a LoRA adapter) resolved through a real trainer service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import pytest

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.generation.config import GenerationSettings
from clinalign.generation.server import GenerationApp
from clinalign.generation.v1 import generation_pb2 as pb
from clinalign.generation.v1 import generation_pb2_grpc
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from tests.conftest import client, serve_in_registry, serving

Token = Callable[[Role], str]
QUESTION = "I have had a fever and a cough for three days. What should I do?"
# Long-running requests: at temperature 2 the tiny model rarely ends early (seeded, so
# the same run every time).
LONG = pb.SamplingParams(max_new_tokens=450, temperature=2.0, seed=11)
BUNDLE = (
    Path(__file__).parents[2] / "services/clinalign/generation/examples/patient_bundle.json"
).read_text()


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model with different weights, to tell versions apart."""
    from clinalign.foundation import build_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny-seed1"
    build_tiny_model(out, seed=1)
    return out


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model with non-zero weights, so it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    out = tmp_path_factory.mktemp("models") / "tiny-lora"
    model.save_pretrained(out)
    return out


def _settings(model: Path, **kw: object) -> GenerationSettings:
    return GenerationSettings(  # type: ignore[arg-type]
        port=0, model_path=model, device="cpu", report_to_monitor=False, **kw
    )


def _ask(prompt: str = QUESTION, **sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        input=pb.GenerationInput(prompt=prompt),
        sampling=pb.SamplingParams(**{"max_new_tokens": 12, "temperature": 0.0, **sampling}),
    )


@asynccontextmanager
async def _generation(
    common: CommonSettings, token: Token, settings: GenerationSettings, role: Role = Role.SERVICE
) -> AsyncIterator[tuple[GenerationApp, generation_pb2_grpc.GenerationServiceStub]]:
    app = GenerationApp(common, settings)
    async with serving(app, common) as running:
        async with client(running, common, token(role)) as ch:
            yield app, generation_pb2_grpc.GenerationServiceStub(ch)


async def test_stream_sends_deltas_then_the_completion(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    async with _generation(common, token, _settings(tiny_model_dir), Role.EHR_CLIENT) as (
        _,
        stub,
    ):
        unary = (await stub.Generate(_ask(max_new_tokens=20))).completion
        req = pb.GenerateStreamRequest(
            input=pb.GenerationInput(prompt=QUESTION),
            sampling=pb.SamplingParams(max_new_tokens=20, temperature=0.0),
        )
        messages = [m async for m in stub.GenerateStream(req)]
    assert len(messages) > 2
    assert all(not m.HasField("completion") for m in messages[:-1])
    final = messages[-1].completion
    assert "".join(m.text_delta for m in messages) == final.text == unary.text
    assert final.completion_tokens == unary.completion_tokens
    assert final.provenance.output_id != unary.provenance.output_id
    assert final.provenance.weights_hash == unary.provenance.weights_hash


async def test_fhir_bundle_renders_a_versioned_template(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    fhir = pb.FhirContext(
        bundle_json=BUNDLE,
        task=pb.CLINICAL_TASK_PATIENT_QUESTION,
        question="Can I take ibuprofen for my knee pain?",
    )
    async with _generation(common, token, _settings(tiny_model_dir), Role.EHR_CLIENT) as (
        _,
        stub,
    ):
        reply = await stub.Generate(
            pb.GenerateRequest(
                input=pb.GenerationInput(fhir=fhir),
                sampling=pb.SamplingParams(max_new_tokens=8, temperature=0.0),
            )
        )
        summary = await stub.Generate(
            pb.GenerateRequest(
                input=pb.GenerationInput(
                    fhir=pb.FhirContext(bundle_json=BUNDLE, task=pb.CLINICAL_TASK_SUMMARY)
                ),
                sampling=pb.SamplingParams(max_new_tokens=8, temperature=0.0),
            )
        )
    assert reply.completion.provenance.prompt_template_version.startswith("patient_question/")
    assert summary.completion.provenance.prompt_template_version.startswith("summary/")
    assert reply.completion.prompt_tokens > 50  # the record was rendered into the prompt


@pytest.mark.parametrize(
    ("fhir", "field"),
    [
        (pb.FhirContext(bundle_json="{not json", task=pb.CLINICAL_TASK_SUMMARY), "bundle_json"),
        (
            pb.FhirContext(
                bundle_json=json.dumps({"resourceType": "Bundle", "type": "collection"}),
                task=pb.CLINICAL_TASK_SUMMARY,
            ),
            "bundle_json",
        ),
        (pb.FhirContext(bundle_json=BUNDLE), "task"),
        (pb.FhirContext(bundle_json=BUNDLE, task=pb.CLINICAL_TASK_PATIENT_QUESTION), "question"),
        (
            pb.FhirContext(
                bundle_json=BUNDLE, task=pb.CLINICAL_TASK_SUMMARY, template_version="1999-01-1"
            ),
            "template_version",
        ),
    ],
)
async def test_bad_fhir_is_invalid_argument_naming_the_field(
    common: CommonSettings, token: Token, tiny_model_dir: Path, fhir: pb.FhirContext, field: str
) -> None:
    async with _generation(common, token, _settings(tiny_model_dir)) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(pb.GenerateRequest(input=pb.GenerationInput(fhir=fhir)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"input.fhir.{field}")


async def test_prompt_beyond_the_context_is_invalid_argument(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    async with _generation(common, token, _settings(tiny_model_dir)) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(_ask(prompt="fever " * 600))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceed the model's context" in (info.value.details() or "")


async def test_full_queue_is_resource_exhausted_at_once(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    # Three long requests at once against room for two (one decoding, one waiting): the
    # two admitted run for hundreds of milliseconds, so whichever arrives third is
    # refused at once rather than queued.
    settings = _settings(tiny_model_dir, max_queue=2, max_batch_size=1)
    long = pb.GenerateStreamRequest(input=pb.GenerationInput(prompt=QUESTION), sampling=LONG)

    async def first_message(stub: generation_pb2_grpc.GenerationServiceStub) -> object:
        call = stub.GenerateStream(long, timeout=30)
        try:
            return await call.read()
        except grpc.aio.AioRpcError as err:
            return err
        finally:
            call.cancel()

    async with _generation(common, token, settings) as (_, stub):
        outcomes = await asyncio.gather(*(first_message(stub) for _ in range(3)))
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(refused) == 1, outcomes
    assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in (refused[0].details() or "")


async def test_deadline_and_cancel_stop_the_work(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    async with _generation(common, token, _settings(tiny_model_dir, max_batch_size=1)) as (
        app,
        stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(
                pb.GenerateRequest(input=pb.GenerationInput(prompt=QUESTION), sampling=LONG),
                timeout=0.05,
            )
        call = stub.GenerateStream(
            pb.GenerateStreamRequest(input=pb.GenerationInput(prompt=QUESTION), sampling=LONG)
        )
        await call.read()
        call.cancel()
        backend = app.router.pick()
        for _ in range(200):
            if backend.queue_depth == 0:
                break
            await asyncio.sleep(0.01)
        assert backend.queue_depth == 0  # both requests left the batch early
        # the slot is free again: a normal request goes straight through
        after = await stub.Generate(_ask(), timeout=10)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert after.completion.completion_tokens > 0


async def test_candidates_differ_and_are_validated(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    async with _generation(common, token, _settings(tiny_model_dir)) as (_, stub):
        reply = await stub.GenerateCandidates(
            pb.GenerateCandidatesRequest(
                input=pb.GenerationInput(prompt=QUESTION),
                n=4,
                sampling=pb.SamplingParams(max_new_tokens=10, temperature=1.0, seed=3),
            )
        )
        again = await stub.GenerateCandidates(
            pb.GenerateCandidatesRequest(
                input=pb.GenerationInput(prompt=QUESTION),
                n=4,
                sampling=pb.SamplingParams(max_new_tokens=10, temperature=1.0, seed=3),
            )
        )
        errors = []
        for bad in (
            pb.GenerateCandidatesRequest(input=pb.GenerationInput(prompt=QUESTION), n=1),
            pb.GenerateCandidatesRequest(
                input=pb.GenerationInput(prompt=QUESTION),
                n=2,
                sampling=pb.SamplingParams(temperature=0.0),
            ),
            pb.GenerateCandidatesRequest(
                input=pb.GenerationInput(prompt=QUESTION), n=2, model_versions=["a", "b", "c"]
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GenerateCandidates(bad)
            errors.append((info.value.code(), (info.value.details() or "").split(":")[0]))
    texts = [c.text for c in reply.candidates]
    assert len(texts) == 4 and len(set(texts)) > 1
    assert texts == [c.text for c in again.candidates]  # seed + i per candidate: reproducible
    assert len({c.provenance.output_id for c in reply.candidates}) == 4
    assert errors == [
        (grpc.StatusCode.INVALID_ARGUMENT, "n"),
        (grpc.StatusCode.INVALID_ARGUMENT, "sampling.temperature"),
        (grpc.StatusCode.INVALID_ARGUMENT, "model_versions"),
    ]


async def _register(stub: trainer_pb2_grpc.TrainerServiceStub, path: Path) -> str:
    reply = await stub.RegisterModel(
        trainer_pb2.RegisterModelRequest(path=str(path), kind=common_pb2.MODEL_KIND_POLICY)
    )
    return str(reply.version.ref.version)


async def test_activate_switches_versions_without_dropping_in_flight_requests(
    common: CommonSettings,
    token: Token,
    tiny_model_dir: Path,
    second_model_dir: Path,
    adapter_dir: Path,
) -> None:
    trainer = TrainerApp(common, TrainerSettings(port=0))
    async with serving(trainer, common) as tr:
        async with client(tr, common, token(Role.ML_ENGINEER)) as ch:
            registry = trainer_pb2_grpc.TrainerServiceStub(ch)
            v1 = await _register(registry, tiny_model_dir)
            v2 = await _register(registry, second_model_dir)
            lora = await _register(registry, adapter_dir)
            lora_entry = (
                await registry.GetModelVersion(trainer_pb2.GetModelVersionRequest(version=lora))
            ).version
        wired = common.model_copy(update={"trainer_target": f"127.0.0.1:{tr.port}"})
        # One sequence at a time: of three long requests, the third waits for the other two,
        # so it is certainly still in flight (queued) when ActivateModel is called.
        settings = _settings(tiny_model_dir, model_version=v1, max_batch_size=1)
        async with _generation(wired, token, settings) as (_, stub):
            long = pb.GenerateStreamRequest(
                input=pb.GenerationInput(prompt=QUESTION), sampling=LONG
            )
            in_flight = [stub.GenerateStream(long) for _ in range(3)]
            await in_flight[0].read()
            serve_in_registry(common, v2)
            switched = await stub.ActivateModel(pb.ActivateModelRequest(version=v2))
            drained = [[m async for m in call] for call in in_flight]
            finished = drained[-1][-1].completion
            after = (await stub.Generate(_ask())).completion
            serve_in_registry(common, v1)
            serve_in_registry(common, lora, canary_share=0.5)
            canary = await stub.ActivateModel(
                pb.ActivateModelRequest(version=v1, canary_version=lora, canary_fraction=0.5)
            )
            listed = await stub.ListModels(pb.ListModelsRequest())
            versions = [
                (await stub.Generate(_ask())).completion.provenance.model_version for _ in range(24)
            ]
            pair = await stub.GenerateCandidates(
                pb.GenerateCandidatesRequest(
                    input=pb.GenerationInput(prompt=QUESTION),
                    n=2,
                    sampling=pb.SamplingParams(max_new_tokens=6, temperature=1.0),
                    model_versions=[v1, v2],
                )
            )
            errors = []
            for bad in (
                pb.ActivateModelRequest(version="policy-v99"),
                pb.ActivateModelRequest(version=v1, canary_version=v2, canary_fraction=0.7),
                pb.ActivateModelRequest(),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ActivateModel(bad)
                errors.append(info.value.code())
            still = await stub.ListModels(pb.ListModelsRequest())
    assert [m.model.ref.version for m in switched.models] == [v2]
    for stream in drained:  # none was dropped; all finished on the version they started on
        assert stream[-1].completion.provenance.model_version == v1
        assert stream[-1].completion.completion_tokens == 450
    assert after.provenance.model_version == v2
    assert after.provenance.weights_hash != finished.provenance.weights_hash
    assert {(m.model.ref.version, m.traffic_fraction) for m in canary.models} == {
        (v1, 0.5),
        (lora, 0.5),
    }
    assert listed == still  # failed activations changed nothing
    lora_served = next(m.model for m in listed.models if m.model.ref.version == lora)
    assert lora_served.adapter_path == lora_entry.adapter_path != ""
    assert lora_served.weights_hash == lora_entry.weights_hash
    assert set(versions) == {v1, lora}  # both sides of the split served
    assert [c.provenance.model_version for c in pair.candidates] == [v1, v2]
    assert errors == [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]


async def test_metrics_follow_the_genai_conventions(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    from prometheus_client import REGISTRY

    version = {"gen_ai_response_model": "metrics-v"}
    names = [
        "gen_ai_server_time_to_first_token_seconds_count",
        "gen_ai_server_time_per_output_token_seconds_count",
        "gen_ai_server_request_duration_seconds_count",
    ]

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    before = {n: value(n, version) for n in names}
    queue_before = value("clinalign_generation_queue_time_seconds_count")
    steps_before = value("clinalign_generation_batch_size_count")
    output_tokens = value(
        "gen_ai_server_token_usage_tokens_sum", {**version, "gen_ai_token_type": "output"}
    )
    settings = _settings(tiny_model_dir, model_version="metrics-v")
    async with _generation(common, token, settings) as (_, stub):
        replies = await asyncio.gather(*(stub.Generate(_ask(max_new_tokens=8)) for _ in range(3)))
    generated = sum(r.completion.completion_tokens for r in replies)
    assert all(value(n, version) == before[n] + 3 for n in names)
    assert value("clinalign_generation_queue_time_seconds_count") == queue_before + 3
    assert value("clinalign_generation_batch_size_count") > steps_before
    assert (
        value("gen_ai_server_token_usage_tokens_sum", {**version, "gen_ai_token_type": "output"})
        == output_tokens + generated
    )
    assert value("clinalign_generation_queue_depth", version) == 0
