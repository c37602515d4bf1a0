"""RewardService through real gRPC: NOT_SERVING without a model, Score with one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.reward.config import RewardSettings
from clinalign.reward.server import RewardApp
from clinalign.reward.v1 import reward_pb2 as pb
from clinalign.reward.v1 import reward_pb2_grpc
from tests.conftest import client, serving

Token = Callable[[Role], str]


async def test_without_a_model_the_service_is_not_serving(
    common: CommonSettings, token: Token
) -> None:
    app = RewardApp(common, RewardSettings(port=0))
    async with serving(app, common) as running, client(running, common, token(Role.SERVICE)) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        process = await health.Check(health_pb2.HealthCheckRequest(service=""))
        own = await health.Check(health_pb2.HealthCheckRequest(service=app.full_name))
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        assert (await stub.ListModels(pb.ListModelsRequest())).active_version == ""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Score(pb.ScoreRequest(items=[pb.ScoreItem(prompt="q", response="a")]))
    assert process.status == health_pb2.HealthCheckResponse.SERVING
    assert own.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_score_batches_and_validates(
    common: CommonSettings, token: Token, tiny_reward_dir: Path
) -> None:
    settings = RewardSettings(
        port=0, model_path=tiny_reward_dir, model_version="rm-test", device="cpu", max_batch=4
    )
    app = RewardApp(common, settings)
    items = [
        pb.ScoreItem(prompt="I have a headache.", response="Rest and drink water."),
        pb.ScoreItem(prompt="I have a headache.", response="Call emergency services now."),
    ]
    async with serving(app, common) as running, client(running, common, token(Role.SERVICE)) as ch:
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        scored = await stub.Score(pb.ScoreRequest(items=items))
        alone = await stub.Score(pb.ScoreRequest(items=items[1:]))
        errors = {}
        for name, req in {
            "items": pb.ScoreRequest(),
            "items ": pb.ScoreRequest(items=items * 3),
            "items[0].response": pb.ScoreRequest(items=[pb.ScoreItem(prompt="q")]),
            "items[0]": pb.ScoreRequest(
                items=[pb.ScoreItem(prompt="word " * 3000, response="fine")]
            ),
        }.items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Score(req)
            errors[name.strip() + ("#" if name.endswith(" ") else "")] = info.value
        truncated = await stub.Score(
            pb.ScoreRequest(
                items=[pb.ScoreItem(prompt="word " * 3000, response="fine")], truncate=True
            )
        )
    assert scored.model_version == "rm-test"
    assert len(scored.results) == 2
    assert scored.results[0].raw_score != scored.results[1].raw_score
    # Padding in a batch does not change a pair's score (read at the last real token).
    assert alone.results[0].raw_score == pytest.approx(scored.results[1].raw_score, abs=1e-4)
    for name, err in errors.items():
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.details() or "").startswith(name.rstrip("#") + ":")
    assert truncated.results[0].truncated is True
