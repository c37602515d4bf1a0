"""The remote backend against a stand-in for TGI's HTTP contract (and a vLLM-style
OpenAI-compatible API): streaming, parameters as TGI expects them, finish reasons, token
accounting, error mapping, cancellation and admission."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from clinalign.generation.backend import EOS, LENGTH, STOP, Delta, Event, Generated
from clinalign.generation.config import GenerationSettings
from clinalign.generation.params import Sampling
from clinalign.generation.remote import RemoteBackend
from clinalign.generation.server import GenerationApp
from clinalign.generation.v1 import generation_pb2 as gen_pb
from clinalign.generation.v1 import generation_pb2_grpc
from tests.conftest import client, free_port, serving
from tests.tgi_standin import ANSWER, Fault, TgiStandIn

WORDS = ANSWER.split(" ")
PROMPT = "Plan for new type 2 diabetes?"


def render(message: str) -> str:
    """A chat template, as the servicer would pass the model's."""
    return f"<|user|> {message} <|assistant|>"


@pytest.fixture
def tgi() -> Iterator[TgiStandIn]:
    with TgiStandIn() as server:
        yield server


def settings(url: str, **overrides: Any) -> GenerationSettings:
    values: dict[str, Any] = {"backend": "remote", "remote_url": url, "remote_timeout_s": 5}
    return GenerationSettings(**(values | overrides))


async def started(url: str, **overrides: Any) -> RemoteBackend:
    backend = RemoteBackend(
        settings(url, **overrides),
        name="clinalign-policy",
        version="v7",
        render=render,
    )
    await backend.start()
    return backend


async def run(backend: RemoteBackend, sampling: Sampling) -> tuple[list[Delta], Generated]:
    events: list[Event] = [e async for e in backend.stream(PROMPT, sampling)]
    *deltas, result = events
    assert all(isinstance(d, Delta) for d in deltas)
    assert isinstance(result, Generated)
    return deltas, result  # type: ignore[return-value]


async def test_deltas_add_up_to_the_final_text(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url)
    deltas, result = await run(backend, Sampling(temperature=0.0, max_new_tokens=100))

    assert "".join(d.text for d in deltas) == result.text == ANSWER  # no "</s>"
    assert result.finish_reason == EOS
    # TGI counts the end-of-sequence token; the prompt is the rendered one (a token a word).
    assert result.completion_tokens == len(WORDS) + 1
    assert result.prompt_tokens == len(render(PROMPT).split())
    assert [d.completion_tokens for d in deltas] == list(range(1, len(WORDS) + 1))
    assert 0 <= result.queue_s <= result.ttft_s <= result.duration_s
    assert result.model.weights_hash == f"tgi:{tgi.model_id}@{tgi.model_sha}"
    assert result.model.uri == tgi.url
    assert (result.model.name, result.model.version) == ("clinalign-policy", "v7")
    assert backend.queue_depth == 0
    await backend.close()


async def test_sampling_reaches_tgi_as_it_expects(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url)
    sampling = Sampling(
        temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=50, stop=("###",), seed=3
    )
    await run(backend, sampling)

    request = tgi.generation_requests[-1]
    assert request.path == "/"  # the compat route, told to stream
    assert request.body == {
        "inputs": render(PROMPT),
        "stream": True,
        "parameters": {
            "details": True,
            "return_full_text": False,
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 20,
            "max_new_tokens": 50,
            "stop": ["###"],
            "seed": 3,
        },
    }
    await backend.close()


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        # TGI rejects temperature 0, top_p 1 and top_k 0: greedy is do_sample=false alone.
        (Sampling(temperature=0.0, top_p=1.0, top_k=0, seed=5), {"do_sample": False}),
        # TGI samples only when asked; neutral warpers are left out.
        (Sampling(temperature=1.0, top_p=1.0, top_k=0), {"do_sample": True, "temperature": 1.0}),
    ],
)
async def test_neutral_values_are_left_out(
    tgi: TgiStandIn, sampling: Sampling, expected: dict[str, Any]
) -> None:
    backend = await started(tgi.url)
    await run(backend, sampling)
    sent = dict(tgi.last_body["parameters"])
    for always in ("details", "return_full_text", "max_new_tokens", "stop"):
        sent.pop(always)
    assert sent == expected
    await backend.close()


async def test_unary_calls_get_only_the_result(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url)
    events = [e async for e in backend.stream(PROMPT, Sampling(max_new_tokens=4), deltas=False)]
    assert len(events) == 1
    assert isinstance(events[0], Generated)
    assert events[0].text == "Start metformin 500 mg"
    await backend.close()


async def test_length_finish(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url)
    deltas, result = await run(backend, Sampling(temperature=0.0, max_new_tokens=3))
    assert result.text == "Start metformin 500"
    assert "".join(d.text for d in deltas) == result.text
    assert (result.finish_reason, result.completion_tokens) == (LENGTH, 3)
    await backend.close()


@pytest.mark.parametrize(
    ("stop", "text", "tokens"),
    [
        (
            ("HbA1c",),
            "Start metformin 500 mg twice daily with meals, check renal function and ",
            13,
        ),
        # Spans two tokens: " mg" is held back until " twice" shows it is the stop sequence.
        (("mg twice",), "Start metformin 500 ", 5),
    ],
)
async def test_stop_sequence_is_cut_and_never_streamed(
    tgi: TgiStandIn, stop: tuple[str, ...], text: str, tokens: int
) -> None:
    backend = await started(tgi.url)
    deltas, result = await run(backend, Sampling(temperature=0.0, stop=stop))
    assert result.text == text  # TGI returns the stop sequence; the backend removes it
    assert "".join(d.text for d in deltas) == text
    assert result.finish_reason == STOP
    assert result.completion_tokens == tokens  # up to the one that completed the stop
    await backend.close()


@pytest.mark.parametrize("in_stream", [True, False], ids=["sse-event", "http-429"])
async def test_overloaded_is_resource_exhausted(tgi: TgiStandIn, in_stream: bool) -> None:
    backend = await started(tgi.url)
    tgi.fault = Fault.overloaded(in_stream=in_stream)
    with pytest.raises(ResourceExhausted, match=r"^the inference backend is overloaded") as e:
        await run(backend, Sampling())
    assert "127.0.0.1" not in e.value.message  # no internal address to the EHR client
    assert backend.queue_depth == 0
    await backend.close()


@pytest.mark.parametrize("in_stream", [True, False], ids=["sse-event", "http-422"])
async def test_validation_error_names_the_prompt(
    tgi: TgiStandIn, in_stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await started(tgi.url)
    tgi.fault = Fault.validation("`inputs` must have less than 1024 tokens", in_stream=in_stream)
    with pytest.raises(
        InvalidArgument, match=r"^input\.prompt: the inference backend refused the request"
    ) as caught:
        await run(backend, Sampling())
    assert caught.value.field == "input.prompt"
    # The backend's own words go to the operator's log, not to the caller.
    assert "less than 1024" not in caught.value.message
    logged = [r for r in caplog.records if r.getMessage() == "remote generation failed"]
    assert "less than 1024 tokens" in logged[-1].fields["server_message"]  # type: ignore[attr-defined]
    await backend.close()


async def test_prompt_over_the_servers_context_is_invalid_argument() -> None:
    with TgiStandIn(max_input_tokens=16, max_total_tokens=32) as tgi:
        backend = await started(tgi.url)
        prompt = "history " * 20
        with pytest.raises(InvalidArgument, match=r"input\.prompt: .*longer than the model"):
            async for _ in backend.stream(prompt, Sampling(max_new_tokens=8)):
                pass
        await backend.close()


async def test_more_stop_sequences_than_tgi_allows(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url)
    stop = tuple(f"#{i}" for i in range(tgi.max_stop_sequences + 1))
    with pytest.raises(InvalidArgument, match=r"^sampling\.stop: .*at most 4 stop sequences"):
        await run(backend, Sampling(stop=stop))
    assert not tgi.generation_requests
    await backend.close()


async def test_server_error_statuses_are_unavailable(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url)
    tgi.fault = Fault.unavailable()
    with pytest.raises(Unavailable, match=r"failed the request \(HTTP 503\); the operator's"):
        await run(backend, Sampling())
    tgi.fault = Fault(500, "Incomplete generation", "incomplete_generation", in_stream=True)
    with pytest.raises(Unavailable, match="failed the request; the operator's logs say why"):
        await run(backend, Sampling())
    await backend.close()


async def test_server_down_at_start() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    backend = RemoteBackend(settings(url), name="p", version="v1")
    with pytest.raises(
        Unavailable, match=rf"cannot reach .* at {url}/health .*CLINALIGN_GENERATION_REMOTE_URL"
    ):
        await backend.start()


async def test_unhealthy_server_at_start(tgi: TgiStandIn) -> None:
    tgi.healthy = False
    backend = RemoteBackend(settings(tgi.url), name="p", version="v1")
    with pytest.raises(Unavailable, match=r"/health answered HTTP 503"):
        await backend.start()


async def test_server_gone_during_serving(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url)
    tgi.stop()
    with pytest.raises(Unavailable, match=r"cannot reach .* \(ConnectError\); check CLINALIGN"):
        await run(backend, Sampling())
    assert backend.queue_depth == 0
    await backend.close()


async def test_broken_stream_is_unavailable(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url)
    tgi.drop_after_tokens = 2
    with pytest.raises(Unavailable, match=r"lost the connection to .* \(RemoteProtocolError\)"):
        await run(backend, Sampling())
    assert backend.queue_depth == 0
    await backend.close()


async def test_stalled_stream_times_out(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url, remote_timeout_s=0.3)
    tgi.token_delay_s = 2.0
    with pytest.raises(Unavailable, match=r"did not answer within 0\.3 s"):
        await run(backend, Sampling())
    await backend.close()


async def test_consumer_leaving_closes_the_stream(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url)
    tgi.token_delay_s = 0.05
    async with aclosing(backend.stream("Plan?", Sampling(max_new_tokens=200))) as events:
        async for event in events:
            assert isinstance(event, Delta)
            break
    assert backend.queue_depth == 0
    assert await asyncio.to_thread(tgi.wait_for_disconnect, 5.0)
    assert tgi.completed_streams == 0
    await backend.close()


async def test_cancelled_request_closes_the_stream(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url)
    tgi.token_delay_s = 0.05
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.stream("Plan?", Sampling(max_new_tokens=200)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.queue_depth == 0
    assert await asyncio.to_thread(tgi.wait_for_disconnect, 5.0)
    await backend.close()


async def test_admission_is_bounded_by_max_queue(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url, max_queue=1)
    tgi.token_delay_s = 0.02
    async with aclosing(backend.stream("Plan?", Sampling(max_new_tokens=5))) as first:
        await anext(first)
        assert backend.queue_depth == 1
        with pytest.raises(ResourceExhausted, match=r"queue is full \(1 requests"):
            await run(backend, Sampling())
        rest = [e async for e in first]
    assert isinstance(rest[-1], Generated)
    assert backend.queue_depth == 0
    await run(backend, Sampling(max_new_tokens=2))  # admitted again
    await backend.close()


async def test_no_hugging_face_token_is_sent(
    tgi: TgiStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub would otherwise send the machine's token to the URL.
    monkeypatch.setenv("HF_TOKEN", "hf_not_for_the_inference_server")
    backend = await started(tgi.url)
    await run(backend, Sampling(max_new_tokens=2))
    assert not any(k.lower() == "authorization" for k in tgi.generation_requests[-1].headers)
    await backend.close()


async def test_weights_hash_without_a_model_sha() -> None:
    with TgiStandIn(model_sha=None) as tgi:
        backend = await started(tgi.url)
        assert backend.info.weights_hash == f"remote:{tgi.model_id}"
        await backend.close()


async def test_a_url_is_required() -> None:
    # Anything else huggingface_hub would take for a Hub model id.
    backend = RemoteBackend(settings("meta-llama/Llama-3.1-8B"), name="p", version="v1")
    with pytest.raises(FailedPrecondition, match=r"CLINALIGN_GENERATION_REMOTE_URL must be"):
        await backend.start()


async def test_not_started_and_closed(tgi: TgiStandIn) -> None:
    backend = RemoteBackend(settings(tgi.url), name="p", version="v1")
    with pytest.raises(FailedPrecondition, match="has not been started"):
        await run(backend, Sampling())
    await backend.start()
    await backend.close()
    with pytest.raises(Unavailable, match="shutting down"):
        await run(backend, Sampling())


# -- OpenAI-compatible (vLLM) ------------------------------------------------------------


async def test_openai_streams_with_usage_and_discovers_the_model(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url, remote_api="openai")
    assert backend.info.weights_hash == f"remote:{tgi.model_id}"
    sampling = Sampling(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=100, seed=3)
    deltas, result = await run(backend, sampling)

    assert "".join(d.text for d in deltas) == result.text == ANSWER
    assert result.finish_reason == EOS  # "stop" with no stop string named
    assert result.completion_tokens == len(WORDS) + 1  # from the usage chunk
    assert result.prompt_tokens == len(PROMPT.split())
    request = tgi.generation_requests[-1]
    assert request.path == "/v1/chat/completions"
    assert request.body == {
        "model": tgi.model_id,  # from /v1/models
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 100,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "seed": 3,
    }
    await backend.close()


@pytest.mark.parametrize(
    ("sampling", "finish", "text"),
    [
        (Sampling(temperature=0.0, max_new_tokens=2), LENGTH, "Start metformin"),
        (Sampling(temperature=0.0, stop=("twice",)), STOP, "Start metformin 500 mg "),
    ],
)
async def test_openai_finish_reasons(
    tgi: TgiStandIn, sampling: Sampling, finish: str, text: str
) -> None:
    backend = await started(tgi.url, remote_api="openai")
    deltas, result = await run(backend, sampling)
    assert (result.finish_reason, result.text) == (finish, text)
    assert "".join(d.text for d in deltas) == text
    assert tgi.last_body["temperature"] == 0.0  # greedy, as OpenAI-compatible servers take it
    await backend.close()


async def test_openai_model_not_served(tgi: TgiStandIn) -> None:
    backend = RemoteBackend(
        settings(tgi.url, remote_api="openai", remote_model="other/model"), name="p", version="v1"
    )
    with pytest.raises(
        FailedPrecondition, match=r"CLINALIGN_GENERATION_REMOTE_MODEL='other/model' is not served"
    ):
        await backend.start()


@pytest.mark.parametrize("in_stream", [True, False], ids=["sse-event", "http-429"])
async def test_openai_overloaded(tgi: TgiStandIn, in_stream: bool) -> None:
    backend = await started(tgi.url, remote_api="openai")
    tgi.fault = Fault.overloaded(in_stream=in_stream)
    with pytest.raises(ResourceExhausted, match="is overloaded"):
        await run(backend, Sampling())
    await backend.close()


async def test_openai_prompt_too_long(tgi: TgiStandIn) -> None:
    backend = await started(tgi.url, remote_api="openai")
    tgi.fault = Fault(400, "This model's maximum context length is 2048 tokens", "BadRequest")
    with pytest.raises(InvalidArgument, match=r"^input\.prompt: the inference backend refused"):
        await run(backend, Sampling())
    await backend.close()


# ---- through the generation service's gRPC surface -------------------------------------


async def test_generation_service_on_the_remote_backend(
    common: CommonSettings, token: Callable[[Role], str], tiny_model_dir: Path
) -> None:
    """GenerationService with backend=remote in front of the TGI stand-in (not a real TGI):
    unary and streaming pass through with provenance, overload is RESOURCE_EXHAUSTED, an
    unreachable server UNAVAILABLE, and version switching is refused with the reason."""
    with TgiStandIn() as tgi:
        settings = GenerationSettings(
            port=0,
            backend="remote",
            remote_url=tgi.url,
            model_path=tiny_model_dir,  # its chat template renders the prompt for TGI
            report_to_monitor=False,
        )
        app = GenerationApp(common, settings)
        async with serving(app, common) as running:
            async with client(running, common, token(Role.SERVICE)) as ch:
                stub = generation_pb2_grpc.GenerationServiceStub(ch)
                ask = gen_pb.GenerationInput(prompt="How should I start metformin?")
                unary = (
                    await stub.Generate(
                        gen_pb.GenerateRequest(
                            input=ask, sampling=gen_pb.SamplingParams(max_new_tokens=6)
                        )
                    )
                ).completion
                sent = tgi.last_body
                messages = [
                    m
                    async for m in stub.GenerateStream(
                        gen_pb.GenerateStreamRequest(
                            input=ask, sampling=gen_pb.SamplingParams(max_new_tokens=6)
                        )
                    )
                ]
                tgi.fault = Fault.overloaded()
                with pytest.raises(grpc.aio.AioRpcError) as overloaded:
                    await stub.Generate(gen_pb.GenerateRequest(input=ask))
                tgi.fault = None
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ActivateModel(gen_pb.ActivateModelRequest(version="policy-v2"))
                tgi.fault = Fault.unavailable()  # 503, as TGI answers while unhealthy
                with pytest.raises(grpc.aio.AioRpcError) as down:
                    await stub.Generate(gen_pb.GenerateRequest(input=ask))
    assert unary.text == " ".join(ANSWER.split()[:6])
    assert unary.finish_reason == gen_pb.FINISH_REASON_LENGTH
    assert unary.provenance.weights_hash.startswith("tgi:")
    assert "AI-generated draft" in unary.provenance.notice
    assert sent["inputs"].startswith("<|user|>")  # the model's chat template was applied
    assert "".join(m.text_delta for m in messages) == messages[-1].completion.text == unary.text
    assert overloaded.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "backend=remote" in (refused.value.details() or "")
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
