"""RewardService through real gRPC on tiny reward models: NOT_SERVING without a model,
validation, batching across callers, ScoreStream, overload and cancellation, metrics, and
hot swapping between registered versions resolved through a real trainer service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from clinalign.common.artefacts import NORMALISATION_FILE
from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.reward.batcher import passes
from clinalign.reward.config import RewardSettings
from clinalign.reward.server import RewardApp
from clinalign.reward.v1 import reward_pb2 as pb
from clinalign.reward.v1 import reward_pb2_grpc
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from tests.conftest import client, serve_in_registry, serving

Token = Callable[[Role], str]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PAIRS = [
    ("I have a headache.", "Rest and drink water."),
    ("I have a headache.", "Call emergency services now."),
    ("My child has a fever of 38.5 C.", "Give paracetamol by weight and watch for a rash."),
    ("Can I take ibuprofen with warfarin?", "Avoid it; ask your anticoagulation clinic first."),
    ("I feel dizzy when I stand up.", "Sit down, drink fluids, and tell your doctor."),
    ("What is a normal blood pressure?", "Below 120/80 mmHg for most adults."),
]


def _items(pairs: list[tuple[str, str]]) -> list[pb.ScoreItem]:
    return [pb.ScoreItem(prompt=p, response=r) for p, r in pairs]


def _metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture(scope="module")
def second_reward_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another reward head on the tiny model, with a stored normalisation (mean 1, std 2)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("models") / "tiny-reward-seed1"
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / NORMALISATION_FILE).write_text(json.dumps({"mean": 1.0, "std": 2.0}))
    return out


def _settings(model: Path | None, **kw: object) -> RewardSettings:
    return RewardSettings(port=0, model_path=model, device="cpu", **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def _reward(
    common: CommonSettings, token: Token, settings: RewardSettings
) -> AsyncIterator[tuple[RewardApp, reward_pb2_grpc.RewardServiceStub, grpc.aio.Channel]]:
    app = RewardApp(common, settings)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            yield app, reward_pb2_grpc.RewardServiceStub(ch), ch


async def _health(ch: grpc.aio.Channel, service: str) -> int:
    reply = await health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service=service)
    )
    return int(reply.status)


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_without_a_model_the_service_is_not_serving(
    common: CommonSettings, token: Token
) -> None:
    async with _reward(common, token, _settings(None)) as (app, stub, ch):
        process = await _health(ch, "")
        own = await _health(ch, app.full_name)
        assert (await stub.ListModels(pb.ListModelsRequest())).active_version == ""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Score(pb.ScoreRequest(items=_items(PAIRS[:1])))
    assert process == SERVING
    assert own == NOT_SERVING
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "PromoteModel" in (info.value.details() or "")


async def test_score_validates_and_truncates(
    common: CommonSettings, token: Token, tiny_reward_dir: Path
) -> None:
    settings = _settings(tiny_reward_dir, model_version="rm-test", max_batch=4, max_text_chars=4000)
    async with _reward(common, token, settings) as (_, stub, _ch):
        scored = await stub.Score(pb.ScoreRequest(items=_items(PAIRS[:2])))
        alone = await stub.Score(pb.ScoreRequest(items=_items(PAIRS[1:2])))
        errors = {}
        for name, req in {
            "items": pb.ScoreRequest(),
            "items#": pb.ScoreRequest(items=_items(PAIRS[:5])),
            "items[0].response": pb.ScoreRequest(items=[pb.ScoreItem(prompt="q")]),
            "items[1].prompt": pb.ScoreRequest(
                items=[
                    pb.ScoreItem(prompt="q", response="a"),
                    pb.ScoreItem(prompt="x" * 4001, response="a"),
                ]
            ),
            "items[1]": pb.ScoreRequest(
                items=[
                    pb.ScoreItem(prompt="q", response="a"),
                    pb.ScoreItem(prompt="word " * 700, response="fine " * 20),
                ]
            ),
        }.items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Score(req)
            errors[name.rstrip("#")] = info.value
        truncated = await stub.Score(
            pb.ScoreRequest(items=_items([PAIRS[0], ("word " * 700, "fine " * 20)]), truncate=True)
        )
    assert scored.model_version == "rm-test"
    assert len(scored.results) == 2
    assert scored.results[0].raw_score != scored.results[1].raw_score
    assert scored.results[0].score == scored.results[0].raw_score  # no stored normalisation
    # Padding in a batch does not change a pair's score (read at the last real token).
    assert alone.results[0].raw_score == pytest.approx(scored.results[1].raw_score, abs=1e-4)
    for name, err in errors.items():
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.details() or "").startswith(name + ":")
    assert "set truncate=true" in (errors["items[1]"].details() or "")
    assert [r.truncated for r in truncated.results] == [False, True]


async def test_concurrent_callers_share_forward_passes(
    common: CommonSettings, token: Token, tiny_reward_dir: Path
) -> None:
    version = {"model_version": "rm-batch"}
    served = _metric("clinalign_reward_scores_total", version)
    histogram = _metric("clinalign_reward_score_count", version)
    durations = _metric("clinalign_reward_request_duration_seconds_count", version)
    passes_before = _metric("clinalign_reward_batch_requests_count")
    single_before = _metric("clinalign_reward_batch_requests_bucket", {"le": "1.0"})
    pairs_before = _metric("clinalign_reward_batch_size_sum")
    # A full batch (8 pairs) goes at once; the wait only lets the four callers meet.
    settings = _settings(
        tiny_reward_dir, model_version="rm-batch", max_batch_pairs=8, batch_wait_ms=1000
    )
    calls = [PAIRS[0:2], PAIRS[2:4], PAIRS[4:6], PAIRS[1:3]]
    async with _reward(common, token, settings) as (app, stub, _ch):
        together = await asyncio.gather(
            *(stub.Score(pb.ScoreRequest(items=_items(c))) for c in calls)
        )
        shared = _metric("clinalign_reward_batch_requests_count") - passes_before
        mixed = shared - (
            _metric("clinalign_reward_batch_requests_bucket", {"le": "1.0"}) - single_before
        )
        pairs = _metric("clinalign_reward_batch_size_sum") - pairs_before
        # One full request of the same pairs goes at once, with no waiting.
        one = (
            await stub.Score(pb.ScoreRequest(items=_items([p for c in calls for p in c])))
        ).results
        assert app.models.pick().queued_pairs == 0
    assert mixed >= 1  # at least one forward pass scored pairs of two or more callers
    assert pairs == 8 and shared <= 2  # eight pairs in one or two passes, not four
    # Each caller got its own pairs' scores back, in its order.
    assert [r.raw_score for reply in together for r in reply.results] == pytest.approx(
        [r.raw_score for r in one], abs=1e-4
    )
    assert _metric("clinalign_reward_scores_total", version) == served + 16
    assert _metric("clinalign_reward_score_count", version) == histogram + 16
    assert _metric("clinalign_reward_request_duration_seconds_count", version) == durations + 5
    assert _metric("clinalign_reward_queue_pairs", version) == 0
    scores = [r.score for reply in together for r in reply.results] * 2
    mean = sum(scores) / len(scores)
    assert _metric("clinalign_reward_score_mean", version) == pytest.approx(mean, abs=1e-4)
    assert _metric("clinalign_reward_score_std", version) > 0


def test_passes_respect_both_budgets() -> None:
    lengths = [5, 6, 7, 8, 40, 41, 100]
    cut = [lengths[part] for part in passes(lengths, max_rows=3, max_tokens=90)]
    assert cut == [[5, 6, 7], [8, 40], [41], [100]]


async def test_score_stream_answers_in_order_and_names_the_message(
    common: CommonSettings, token: Token, tiny_reward_dir: Path
) -> None:
    messages = [PAIRS[0:3], PAIRS[3:4], PAIRS[4:6], PAIRS[0:1]]
    async with _reward(common, token, _settings(tiny_reward_dir, model_version="rm-s")) as (
        _,
        stub,
        _ch,
    ):
        unary = [(await stub.Score(pb.ScoreRequest(items=_items(m)))).results for m in messages]
        stream = stub.ScoreStream(iter([pb.ScoreStreamRequest(items=_items(m)) for m in messages]))
        replies = [r async for r in stream]
        bad = [
            pb.ScoreStreamRequest(items=_items(PAIRS[0:1])),
            pb.ScoreStreamRequest(items=_items(PAIRS[1:2])),
            pb.ScoreStreamRequest(items=[pb.ScoreItem(prompt="q", response="a"), pb.ScoreItem()]),
            pb.ScoreStreamRequest(items=_items(PAIRS[2:3])),
        ]
        failing = stub.ScoreStream(iter(bad))
        before_error = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for reply in failing:
                before_error.append(reply)
    assert [r.model_version for r in replies] == ["rm-s"] * 4
    for reply, expected in zip(replies, unary, strict=True):
        assert [r.raw_score for r in reply.results] == pytest.approx(
            [r.raw_score for r in expected], abs=1e-4
        )
    assert len(before_error) == 2
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "message 2: items[1].response: must not be empty"


async def test_full_queue_is_resource_exhausted_and_cancelled_pairs_are_skipped(
    common: CommonSettings, token: Token, tiny_reward_dir: Path
) -> None:
    version = {"model_version": "rm-q"}
    served = _metric("clinalign_reward_scores_total", version)
    # Requests wait up to 0.8 s for a fuller batch: long enough to fill the queue.
    settings = _settings(
        tiny_reward_dir, model_version="rm-q", max_batch=4, max_queue_pairs=4, batch_wait_ms=800
    )
    async with _reward(common, token, settings) as (app, stub, _ch):
        batcher = app.models.pick()
        gone = asyncio.ensure_future(
            stub.Score(pb.ScoreRequest(items=_items(PAIRS[:2])), timeout=0.4)
        )
        waiting = asyncio.ensure_future(stub.Score(pb.ScoreRequest(items=_items(PAIRS[2:4]))))
        await _until(lambda: batcher.queued_pairs == 4)
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await stub.Score(pb.ScoreRequest(items=_items(PAIRS[4:5])), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await gone
        answered = await waiting
        after = await stub.Score(pb.ScoreRequest(items=_items(PAIRS[4:5])), timeout=5)
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in (full.value.details() or "")
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(answered.results) == 2 and len(after.results) == 1
    # The caller that gave up was not scored: only 2 + 1 pairs reached the model.
    assert _metric("clinalign_reward_scores_total", version) == served + 3


async def _register(
    stub: trainer_pb2_grpc.TrainerServiceStub, path: Path, kind: common_pb2.ModelKind.ValueType
) -> str:
    reply = await stub.RegisterModel(trainer_pb2.RegisterModelRequest(path=str(path), kind=kind))
    return str(reply.version.ref.version)


async def test_activate_swaps_models_without_dropping_in_flight_requests(
    common: CommonSettings,
    token: Token,
    tiny_model_dir: Path,
    tiny_reward_dir: Path,
    second_reward_dir: Path,
) -> None:
    trainer = TrainerApp(common, TrainerSettings(port=0))
    async with serving(trainer, common) as tr:
        async with client(tr, common, token(Role.ML_ENGINEER)) as ch:
            registry = trainer_pb2_grpc.TrainerServiceStub(ch)
            v1 = await _register(registry, tiny_reward_dir, common_pb2.MODEL_KIND_REWARD)
            v2 = await _register(registry, second_reward_dir, common_pb2.MODEL_KIND_REWARD)
            policy = await _register(registry, tiny_model_dir, common_pb2.MODEL_KIND_POLICY)
            entry = (
                await registry.GetModelVersion(trainer_pb2.GetModelVersionRequest(version=v2))
            ).version
        wired = common.model_copy(update={"trainer_target": f"127.0.0.1:{tr.port}"})
        # In-flight requests wait up to 0.4 s for a fuller batch, so the swap overtakes them.
        settings = _settings(None, batch_wait_ms=400)
        request = pb.ScoreRequest(items=_items(PAIRS[:2]))
        async with _reward(wired, token, settings) as (app, stub, rch):
            before = await _health(rch, app.full_name)
            serve_in_registry(common, v1)
            first = await stub.ActivateModel(pb.ActivateModelRequest(version=v1))
            after_first = await _health(rch, app.full_name)
            old = app.models.pick()
            in_flight = [asyncio.ensure_future(stub.Score(request)) for _ in range(3)]
            await _until(lambda: old.queued_pairs == 6)
            serve_in_registry(common, v2)
            switched = await stub.ActivateModel(pb.ActivateModelRequest(version=v2))
            finished = await asyncio.gather(*in_flight)
            now = await stub.Score(request)
            listed = await stub.ListModels(pb.ListModelsRequest())
            errors = []
            for bad in (
                pb.ActivateModelRequest(version="reward-v99"),
                pb.ActivateModelRequest(version=policy),
                pb.ActivateModelRequest(),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ActivateModel(bad)
                errors.append((info.value.code(), (info.value.details() or "").split(":")[0]))
            still = await stub.ListModels(pb.ListModelsRequest())
    assert (before, after_first) == (NOT_SERVING, SERVING)
    assert first.model.ref.version == v1 and first.model.kind == common_pb2.MODEL_KIND_REWARD
    assert switched.model.ref.version == v2
    assert switched.model.weights_hash == entry.weights_hash
    assert switched.model.artifact_uri == entry.artifact_uri
    assert [f.model_version for f in finished] == [v1] * 3  # finished on the old model
    assert now.model_version == v2
    assert now.results[0].raw_score != pytest.approx(finished[0].results[0].raw_score, abs=1e-3)
    assert now.results[0].score == pytest.approx((now.results[0].raw_score - 1.0) / 2.0)
    assert listed.active_version == v2 and [m.ref.version for m in listed.models] == [v2]
    assert listed == still  # failed activations changed nothing
    assert errors == [
        (grpc.StatusCode.NOT_FOUND, "version"),
        (grpc.StatusCode.INVALID_ARGUMENT, "version"),
        (grpc.StatusCode.INVALID_ARGUMENT, "version"),
    ]
