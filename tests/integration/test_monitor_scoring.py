"""The monitor scores every production output through the reward service: reward and cost
in one call, each with its version, so drift in cost is visible per policy version
(GetStats, the cost gauges). Real monitor and reward services over gRPC on loopback."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp
from clinalign.monitor.v1 import monitor_pb2 as pb
from clinalign.monitor.v1 import monitor_pb2_grpc
from clinalign.reward.config import RewardSettings
from clinalign.reward.server import RewardApp
from tests.conftest import client, free_port, serving

Token = Callable[[Role], str]


def _out(oid: str, text_: str, score: float | None = None) -> pb.ProductionOutput:
    at = Timestamp()
    at.FromDatetime(datetime.now(UTC))
    out = pb.ProductionOutput(
        output_id=oid,
        model_version="policy-v2",
        latency_s=0.4,
        completion_tokens=9,
        prompt="Synthetic question: can I take ibuprofen with warfarin?",
        text=text_,
        create_time=at,
    )
    if score is not None:
        out.reward_score = score
    return out


def _rows(common: CommonSettings) -> dict[str, tuple[object, ...]]:
    engine = create_engine(f"sqlite:///{common.data_dir / 'monitor.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT output_id, reward_score, cost, reward_model_version, "
                "cost_model_version, scored_at, score_attempts FROM outputs"
            )
        )
        out = {r[0]: tuple(r[1:]) for r in rows}
    engine.dispose()
    return out


@pytest.mark.parametrize("with_cost", [True, False])
async def test_every_output_is_scored_with_reward_and_cost(
    common: CommonSettings,
    token: Token,
    tiny_reward_dir: Path,
    tiny_cost_dir: Path,
    with_cost: bool,
) -> None:
    reward = RewardApp(
        common,
        RewardSettings(
            port=0,
            device="cpu",
            model_path=tiny_reward_dir,
            model_version="reward-v1",
            cost_model_path=tiny_cost_dir if with_cost else None,
            cost_model_version="cost-v1",
        ),
    )
    async with serving(reward, common) as rw:
        wired = common.model_copy(update={"reward_target": f"127.0.0.1:{rw.port}"})
        monitor = MonitorApp(wired, MonitorSettings(port=0, score_interval_s=3600))
        async with serving(monitor, wired) as mon:
            async with client(mon, common, token(Role.SERVICE)) as ch:
                stub = monitor_pb2_grpc.MonitorServiceStub(ch)
                await stub.RecordOutputs(
                    pb.RecordOutputsRequest(
                        outputs=[
                            _out("o1", "Avoid it; ask your anticoagulation clinic first."),
                            _out("o2", "This is definitely fine, take as much as you like."),
                            _out("o3", "Given by its caller.", score=0.25),
                        ]
                    )
                )
                await monitor.score_outputs()  # one scheduled round, run now
                stats = await stub.GetStats(pb.GetStatsRequest(model_version="policy-v2"))
                await monitor.refresh_gauges()
    rows = _rows(common)
    for oid in ("o1", "o2"):
        score, cost, reward_version, cost_version, scored_at, attempts = rows[oid]
        assert score is not None and scored_at is not None and attempts == 0
        assert reward_version == "reward-v1"
        assert (cost_version, cost is not None) == (("cost-v1", True) if with_cost else ("", False))
    assert rows["o3"][:4] == (0.25, None, "", "")  # the caller's score is kept, not redone
    (v,) = stats.versions
    assert v.reward_score.count == 3
    assert v.cost.count == (2 if with_cost else 0)
    gauge = REGISTRY.get_sample_value("clinalign_monitor_cost_mean", {"model_version": "policy-v2"})
    if with_cost:
        assert 0.0 < v.cost.mean < 1.0
        assert gauge == pytest.approx(v.cost.mean)


async def test_scoring_waits_for_the_reward_service(common: CommonSettings, token: Token) -> None:
    """With the reward service away nothing is scored and no attempt counts against an
    output; the next round after it is back scores them."""
    wired = common.model_copy(update={"reward_target": f"127.0.0.1:{free_port()}"})
    monitor = MonitorApp(wired, MonitorSettings(port=0, score_interval_s=3600))
    async with serving(monitor, wired) as mon:
        async with client(mon, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=[_out("o1", "An answer.")]))
        assert await monitor.scoring.score_due() == 0
    score, _, _, _, scored_at, attempts = _rows(common)["o1"]
    assert (score, scored_at, attempts) == (None, None, 0)


async def test_an_output_the_reward_service_refuses_does_not_block_the_others(
    common: CommonSettings, token: Token, tiny_reward_dir: Path
) -> None:
    reward = RewardApp(common, RewardSettings(port=0, device="cpu", model_path=tiny_reward_dir))
    async with serving(reward, common) as rw:
        wired = common.model_copy(update={"reward_target": f"127.0.0.1:{rw.port}"})
        monitor = MonitorApp(
            wired, MonitorSettings(port=0, score_interval_s=3600, score_max_attempts=2)
        )
        async with serving(monitor, wired) as mon:
            async with client(mon, common, token(Role.SERVICE)) as ch:
                stub = monitor_pb2_grpc.MonitorServiceStub(ch)
                outputs = [_out("good-1", "An answer."), _out("bad", " "), _out("good-2", "Ok.")]
                await stub.RecordOutputs(pb.RecordOutputsRequest(outputs=outputs))
            for _ in range(4):
                await monitor.scoring.score_due()
    rows = _rows(common)
    assert rows["good-1"][0] is not None and rows["good-2"][0] is not None
    assert rows["bad"][0] is None and rows["bad"][-1] == 2  # charged, then left alone
