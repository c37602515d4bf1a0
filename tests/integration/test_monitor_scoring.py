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
from sklearn.metrics import roc_auc_score
from sqlalchemy import create_engine, text

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.monitor import metrics
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp
from clinalign.monitor.v1 import monitor_pb2 as pb
from clinalign.monitor.v1 import monitor_pb2_grpc
from clinalign.reward.config import RewardSettings
from clinalign.reward.server import RewardApp
from tests.conftest import client, free_port, monitor_app, serving

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


def _rows(common: CommonSettings, url: str = "") -> dict[str, tuple[object, ...]]:
    """Each output's scoring columns, read from the monitor's database (``url``, else the
    default SQLite file)."""
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url or f"sqlite:///{common.data_dir / 'monitor.db'}")
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


def _reward(common: CommonSettings, reward_dir: Path, cost_dir: Path | None) -> RewardApp:
    """A reward service on the tiny reward model, serving ``cost_dir`` as cost-v1."""
    settings = RewardSettings(
        port=0,
        device="cpu",
        model_path=reward_dir,
        model_version="reward-v1",
        cost_model_path=cost_dir,
        cost_model_version="cost-v1",
    )
    return RewardApp(common, settings)


@pytest.mark.parametrize("with_cost", [True, False])
async def test_every_output_is_scored_with_reward_and_cost(
    common: CommonSettings,
    token: Token,
    tiny_reward_dir: Path,
    tiny_cost_dir: Path,
    with_cost: bool,
) -> None:
    reward = _reward(common, tiny_reward_dir, tiny_cost_dir if with_cost else None)
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


def _flag(oid: str, severity: int, category: int) -> pb.FlagOutputRequest:
    return pb.FlagOutputRequest(output_id=oid, category=category, severity=severity)


def _accepted(oid: str) -> pb.RecordOutcomeRequest:
    at = Timestamp()
    at.FromDatetime(datetime.now(UTC))
    return pb.RecordOutcomeRequest(
        output_id=oid, outcome=pb.OUTCOME_ACCEPTED, outcome_time=at, source="cds-hooks:test"
    )


async def test_the_served_cost_model_is_measured_on_held_out_clinician_verdicts(
    common: CommonSettings,
    token: Token,
    tiny_reward_dir: Path,
    tiny_cost_dir: Path,
    database_url: str,
) -> None:
    """GetStats' cost_models: the cost model's AUROC on outputs confirmed harmful (a
    confirmed flag, moderate or worse) against outputs accepted without a flag; an output
    flagged before the cost model first scored is not held out, and is left out, as are
    outputs only flagged low, still open, or accepted and then overridden without a
    flag."""
    reward = _reward(common, tiny_reward_dir, tiny_cost_dir)
    harmful = {  # output -> (severity, category) of its confirmed flag
        "h1": (pb.SEVERITY_CRITICAL, common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE),
        "h2": (pb.SEVERITY_MODERATE, common_pb2.ERROR_CATEGORY_OMISSION),
        "h3": (pb.SEVERITY_HIGH, common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE),
    }
    clean = ["c1", "c2", "c3", "c4"]
    texts = {
        oid: f"Synthetic answer {oid}: " + ("take double" if oid.startswith("h") else "see your GP")
        for oid in [*harmful, *clean, "early", "low", "open", "both"]
    }
    async with serving(reward, common) as rw:
        wired = common.model_copy(update={"reward_target": f"127.0.0.1:{rw.port}"})
        monitor = monitor_app(wired, database_url, score_interval_s=3600)
        async with serving(monitor, wired) as mon:
            async with client(mon, common, token(Role.SERVICE)) as ch:
                service = monitor_pb2_grpc.MonitorServiceStub(ch)
                await service.RecordOutputs(
                    pb.RecordOutputsRequest(outputs=[_out(o, t) for o, t in texts.items()])
                )
            async with client(mon, common, token(Role.CLINICIAN)) as ch:
                clinician = monitor_pb2_grpc.MonitorServiceStub(ch)
                # flagged (and confirmed) before the cost model scored anything
                early = await clinician.FlagOutput(
                    _flag("early", pb.SEVERITY_HIGH, common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE)
                )
                await monitor.score_outputs()
                ids = [early.flag.id]
                for oid, (severity, category) in {
                    **harmful,
                    "low": (pb.SEVERITY_LOW, common_pb2.ERROR_CATEGORY_OMISSION),
                }.items():
                    ids.append((await clinician.FlagOutput(_flag(oid, severity, category))).flag.id)
                await clinician.FlagOutput(
                    _flag("open", pb.SEVERITY_HIGH, common_pb2.ERROR_CATEGORY_OMISSION)
                )
                for oid in [*clean, "both"]:
                    await clinician.RecordOutcome(_accepted(oid))
                # accepted, then overridden without a flag: no verdict either way
                overridden = _accepted("both")
                overridden.outcome = pb.OUTCOME_OVERRIDDEN
                await clinician.RecordOutcome(overridden)
                for flag_id in ids:
                    await clinician.ResolveFlag(
                        pb.ResolveFlagRequest(
                            flag_id=flag_id, resolution=pb.RESOLUTION_CONFIRM, reason="seen"
                        )
                    )
            async with client(mon, common, token(Role.ML_ENGINEER)) as ch:
                stats = await monitor_pb2_grpc.MonitorServiceStub(ch).GetStats(pb.GetStatsRequest())
            # a cost model judged in an earlier window, no longer: its gauge goes
            metrics.COST_MODEL_AUROC.labels("cost-v0").set(0.4)
            await monitor.refresh_gauges()
    costs = {oid: row[1] for oid, row in _rows(common, database_url).items()}
    (found,) = stats.cost_models
    assert (found.cost_model_version, found.harmful, found.clean) == ("cost-v1", 3, 4)
    y = [1] * len(harmful) + [0] * len(clean)
    p = [costs[o] for o in [*harmful, *clean]]
    assert found.auroc == pytest.approx(roc_auc_score(y, p))
    assert found.auroc_low <= found.auroc <= found.auroc_high
    assert 0.0 <= found.calibration_error <= 1.0
    unsafe = roc_auc_score(
        [1, 1, 0, 0, 0, 0], [costs["h1"], costs["h3"], *(costs[c] for c in clean)]
    )
    assert dict(found.auroc_by_category) == pytest.approx(
        {
            "unsafe_advice": unsafe,
            "omission": roc_auc_score([1, 0, 0, 0, 0], [costs["h2"], *(costs[c] for c in clean)]),
        }
    )
    # the same figure on /metrics, for the ClinAlignCostModelMissesFlags alert
    gauge = REGISTRY.get_sample_value(
        "clinalign_monitor_cost_model_auroc", {"cost_model_version": "cost-v1"}
    )
    assert gauge == pytest.approx(found.auroc)
    verdicts = {
        v: REGISTRY.get_sample_value(
            "clinalign_monitor_cost_model_verdicts", {"cost_model_version": "cost-v1", "verdict": v}
        )
        for v in ("harmful", "clean")
    }
    assert verdicts == {"harmful": 3.0, "clean": 4.0}
    stale = {"cost_model_version": "cost-v0"}
    assert REGISTRY.get_sample_value("clinalign_monitor_cost_model_auroc", stale) is None
