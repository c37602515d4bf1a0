"""The reward service serves a cost model beside the reward model (issue 21), through real
gRPC: one Score call returns reward and cost with each model's version, costs are the cost
model's probability of harm, a registered cost version is activated into its own slot, and
asking for costs without a cost model is FAILED_PRECONDITION."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.cost_format import probabilities
from clinalign.common.v1 import common_pb2
from clinalign.reward.config import RewardSettings
from clinalign.reward.server import RewardApp
from clinalign.reward.v1 import reward_pb2 as pb
from clinalign.reward.v1 import reward_pb2_grpc
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from tests.conftest import client, serve_in_registry, serving

Token = Callable[[Role], str]
PAIRS = [
    ("I have a headache.", "Rest and drink water."),
    ("Is it gout?", "This is definitely gout, without a doubt."),
    ("Can I take ibuprofen with warfarin?", "Avoid it; ask your anticoagulation clinic first."),
]


def _items() -> list[pb.ScoreItem]:
    return [pb.ScoreItem(prompt=p, response=r) for p, r in PAIRS]


@asynccontextmanager
async def _stub(
    common: CommonSettings, token: Token, settings: RewardSettings
) -> AsyncIterator[reward_pb2_grpc.RewardServiceStub]:
    app = RewardApp(common, settings)
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            yield reward_pb2_grpc.RewardServiceStub(ch)


async def test_one_call_returns_reward_and_cost_with_both_versions(
    common: CommonSettings, token: Token, tiny_reward_dir: Path, tiny_cost_dir: Path
) -> None:
    settings = RewardSettings(
        port=0,
        device="cpu",
        model_path=tiny_reward_dir,
        model_version="reward-v1",
        cost_model_path=tiny_cost_dir,
        cost_model_version="cost-v1",
    )
    before = REGISTRY.get_sample_value("clinalign_reward_cost_count", {"model_version": "cost-v1"})
    async with _stub(common, token, settings) as stub:
        both = await stub.Score(pb.ScoreRequest(items=_items(), include_cost=True))
        plain = await stub.Score(pb.ScoreRequest(items=_items()))

        async def requests() -> AsyncIterator[pb.ScoreStreamRequest]:
            yield pb.ScoreStreamRequest(items=_items(), include_cost=True)
            yield pb.ScoreStreamRequest(items=_items()[:1])

        streamed = [r async for r in stub.ScoreStream(requests())]
        listed = await stub.ListModels(pb.ListModelsRequest())
    after = REGISTRY.get_sample_value("clinalign_reward_cost_count", {"model_version": "cost-v1"})

    expected = probabilities(
        AutoModelForSequenceClassification.from_pretrained(tiny_cost_dir),
        AutoTokenizer.from_pretrained(tiny_cost_dir),
        PAIRS,
    )[:, 0]
    assert (both.model_version, both.cost_model_version) == ("reward-v1", "cost-v1")
    assert [r.cost for r in both.results] == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(0.0 < r.cost < 1.0 for r in both.results)
    # the reward is the same whether or not costs were asked for
    assert [r.score for r in both.results] == pytest.approx([r.score for r in plain.results])
    assert not any(r.HasField("cost") for r in plain.results) and plain.cost_model_version == ""
    assert streamed[0].cost_model_version == "cost-v1" and streamed[0].results[0].HasField("cost")
    assert streamed[1].cost_model_version == "" and not streamed[1].results[0].HasField("cost")
    assert listed.active_version == "reward-v1" and listed.active_cost_version == "cost-v1"
    assert [m.kind for m in listed.models] == [
        common_pb2.MODEL_KIND_REWARD,
        common_pb2.MODEL_KIND_COST,
    ]
    assert (after or 0) - (before or 0) == len(PAIRS) * 2  # Score, then the stream's first


async def test_asking_for_costs_without_a_cost_model_is_a_failed_precondition(
    common: CommonSettings, token: Token, tiny_reward_dir: Path
) -> None:
    settings = RewardSettings(port=0, device="cpu", model_path=tiny_reward_dir)
    async with _stub(common, token, settings) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Score(pb.ScoreRequest(items=_items(), include_cost=True))
        listed = await stub.ListModels(pb.ListModelsRequest())
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no cost model is active" in (info.value.details() or "")
    assert listed.active_cost_version == "" and len(listed.models) == 1


async def test_a_registered_cost_version_is_activated_into_its_own_slot(
    common: CommonSettings,
    token: Token,
    tiny_model_dir: Path,
    tiny_reward_dir: Path,
    tiny_cost_dir: Path,
) -> None:
    trainer = TrainerApp(common, TrainerSettings(port=0))
    async with serving(trainer, common) as tr:
        async with client(tr, common, token(Role.ML_ENGINEER)) as ch:
            registry = trainer_pb2_grpc.TrainerServiceStub(ch)

            async def register(path: Path, kind: common_pb2.ModelKind.ValueType) -> str:
                reply = await registry.RegisterModel(
                    trainer_pb2.RegisterModelRequest(path=str(path), kind=kind)
                )
                return str(reply.version.ref.version)

            cost = await register(tiny_cost_dir, common_pb2.MODEL_KIND_COST)
            policy = await register(tiny_model_dir, common_pb2.MODEL_KIND_POLICY)
        wired = common.model_copy(update={"trainer_target": f"127.0.0.1:{tr.port}"})
        settings = RewardSettings(
            port=0, device="cpu", model_path=tiny_reward_dir, model_version="reward-v1"
        )
        async with _stub(wired, token, settings) as stub:
            serve_in_registry(common, cost)
            activated = await stub.ActivateModel(pb.ActivateModelRequest(version=cost))
            scored = await stub.Score(pb.ScoreRequest(items=_items(), include_cost=True))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ActivateModel(pb.ActivateModelRequest(version=policy))
            listed = await stub.ListModels(pb.ListModelsRequest())
    assert cost == "cost-v1" and activated.model.kind == common_pb2.MODEL_KIND_COST
    assert (scored.model_version, scored.cost_model_version) == ("reward-v1", "cost-v1")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a reward or cost model" in (info.value.details() or "")
    assert (listed.active_version, listed.active_cost_version) == ("reward-v1", "cost-v1")
