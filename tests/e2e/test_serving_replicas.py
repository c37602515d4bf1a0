"""The registry decides what serves, and every replica follows it: a trainer, three
generation replicas and two reward replicas as real processes over gRPC on loopback.

Promotions here are recorded with ``serve_in_registry`` (a passing gate decision written to
the trainer's store, as the gate writes it; the gate itself is tested in test_promotion and
test_policy_promotion); rollbacks go through the RollbackModel RPC. The replicas see both
only through WatchServingState."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from clinalign.cli.stack import wait_serving
from clinalign.common.auth import Role, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.generation.v1 import generation_pb2 as gpb
from clinalign.generation.v1 import generation_pb2_grpc
from clinalign.reward.v1 import reward_pb2 as rpb
from clinalign.reward.v1 import reward_pb2_grpc
from clinalign.trainer.v1 import trainer_pb2 as tpb
from clinalign.trainer.v1 import trainer_pb2_grpc
from tests.conftest import free_ports, serve_in_registry

pytestmark = pytest.mark.slow

CONVERGE_S = 60.0  # generous: loading on two busy cores, not the watch, dominates
ASK = gpb.GenerationInput(prompt="Synthetic question about a rash.")
FEW = gpb.SamplingParams(max_new_tokens=4, seed=1)


class Stack:
    def __init__(self, common: CommonSettings, tmp: Path) -> None:
        self.common = common
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        ports = free_ports(12)
        self.trainer = f"127.0.0.1:{ports[0]}"
        self.ports = {
            "trainer": (ports[0], ports[1]),
            **{f"generation-{i}": (ports[2 + 2 * i], ports[3 + 2 * i]) for i in range(3)},
            **{f"reward-{i}": (ports[8 + 2 * i], ports[9 + 2 * i]) for i in range(2)},
        }

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name][0]}"

    def start(self, name: str) -> None:
        service = name.split("-")[0]
        port, metrics = self.ports[name]
        env = {
            **os.environ,
            "CLINALIGN_DATA_DIR": str(self.common.data_dir),
            "CLINALIGN_TOKENS_FILE": str(self.common.resolved_tokens_file),
            "CLINALIGN_TRAINER_TARGET": self.trainer,
            f"CLINALIGN_{service.upper()}_PORT": str(port),
            f"CLINALIGN_{service.upper()}_METRICS_PORT": str(metrics),
            "CLINALIGN_GENERATION_FOLLOW_REGISTRY": "true",
            "CLINALIGN_GENERATION_REPORT_TO_MONITOR": "false",
            "CLINALIGN_GENERATION_TORCH_THREADS": "1",
            "CLINALIGN_REWARD_FOLLOW_REGISTRY": "true",
            "CLINALIGN_REWARD_TORCH_THREADS": "1",
            "CLINALIGN_TRAINER_SERVING_WATCH_POLL_S": "0.1",
        }
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"clinalign.{service}"],
            env=env,
            stdout=(self.logs / f"{name}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + CONVERGE_S
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except grpc.aio.AioRpcError:
            pass  # a replica still starting
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {CONVERGE_S:.0f} s: {what}")


async def _generated_by(stack: Stack, name: str, token: str) -> str:
    async with open_channel(stack.target(name), stack.common, token) as ch:
        reply = await generation_pb2_grpc.GenerationServiceStub(ch).Generate(
            gpb.GenerateRequest(input=ASK, sampling=FEW), timeout=30
        )
    return str(reply.completion.provenance.model_version)


async def _reward_version(stack: Stack, name: str, token: str) -> str:
    async with open_channel(stack.target(name), stack.common, token) as ch:
        reply = await reward_pb2_grpc.RewardServiceStub(ch).ListModels(
            rpb.ListModelsRequest(), timeout=10
        )
    return str(reply.active_version)


GENERATION = [f"generation-{i}" for i in range(3)]
REWARD = [f"reward-{i}" for i in range(2)]


async def _all_serve(stack: Stack, token: str, policy: str, reward: str = "") -> None:
    async def check() -> bool:
        policies = [await _generated_by(stack, n, token) for n in GENERATION if n in stack.procs]
        rewards = [await _reward_version(stack, n, token) for n in REWARD] if reward else []
        return set(policies) == {policy} and set(rewards) <= {reward}

    await _eventually(check, f"every replica serves {policy} {reward}")


async def _scenario(stack: Stack, tiny: Path, second: Path, reward_dir: Path) -> None:
    common = stack.common
    engineer = token_for_role(common.resolved_tokens_file, Role.ML_ENGINEER)
    service = token_for_role(common.resolved_tokens_file, Role.SERVICE)
    stack.start("trainer")
    await wait_serving(stack.trainer, common, "clinalign.trainer.v1.TrainerService")
    async with open_channel(stack.trainer, common, engineer) as ch:
        trainer = trainer_pb2_grpc.TrainerServiceStub(ch)

        async def register(path: Path, kind: int, serve: bool = False) -> str:
            reply = await trainer.RegisterModel(
                tpb.RegisterModelRequest(path=str(path), kind=kind, serve_if_none=serve)
            )
            return str(reply.version.ref.version)

        v1 = await register(tiny, common_pb2.MODEL_KIND_POLICY, serve=True)
        v2 = await register(second, common_pb2.MODEL_KIND_POLICY)
        ungated = await register(second, common_pb2.MODEL_KIND_POLICY)
        rm1 = await register(reward_dir, common_pb2.MODEL_KIND_REWARD)
        serve_in_registry(common, rm1)
        # Only the first policy serves without the gate (the foundation model's bootstrap).
        with pytest.raises(grpc.aio.AioRpcError) as first_reward:
            await register(reward_dir, common_pb2.MODEL_KIND_REWARD, serve=True)
        assert first_reward.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "serve_if_none" in (first_reward.value.details() or "")

        # Every replica starts on the registry's versions, and only then reports SERVING.
        for name in GENERATION + REWARD:
            stack.start(name)
        for name in GENERATION:
            await wait_serving(
                stack.target(name), common, "clinalign.generation.v1.GenerationService"
            )
        for name in REWARD:
            await wait_serving(stack.target(name), common, "clinalign.reward.v1.RewardService")
        await _all_serve(stack, service, v1, rm1)

        # A promotion reaches every replica.
        serve_in_registry(common, v2)
        await _all_serve(stack, service, v2)

        # A rollback too, and it is recorded with who asked and why.
        await trainer.RollbackModel(
            tpb.RollbackModelRequest(kind=common_pb2.MODEL_KIND_POLICY, reason="test rollback")
        )
        await _all_serve(stack, service, v1)
        state = await trainer.GetServingState(tpb.GetServingStateRequest(history_limit=3))
        newest = state.history[0]
        assert (newest.action, newest.version, newest.reason) == ("rollback", v1, "test rollback")
        assert newest.principal  # the engineer's principal
        shown = _cli(stack, "models", "serving", "--history", "2")
        assert f"policy  {v1}" in shown and f"reward  {rm1}" in shown
        assert f"rollback   {v1} by {newest.principal}: test rollback" in shown

        # A replica killed and started again serves the registry's version.
        serve_in_registry(common, v2)
        await _all_serve(stack, service, v2)
        stack.kill("generation-0")
        stack.start("generation-0")
        await wait_serving(
            stack.target("generation-0"), common, "clinalign.generation.v1.GenerationService"
        )
        assert await _generated_by(stack, "generation-0", service) == v2

    # The trainer stops mid-watch; what changes meanwhile reaches the replicas once it is back.
    stack.kill("trainer")
    await asyncio.sleep(1.0)
    stack.start("trainer")
    await wait_serving(stack.trainer, common, "clinalign.trainer.v1.TrainerService")
    async with open_channel(stack.trainer, common, engineer) as ch:
        trainer = trainer_pb2_grpc.TrainerServiceStub(ch)
        await trainer.RollbackModel(tpb.RollbackModelRequest(kind=common_pb2.MODEL_KIND_POLICY))
    await _all_serve(stack, service, v1)

    # No caller makes a replica serve what the gate has not passed.
    async with open_channel(stack.target("generation-1"), common, engineer) as ch:
        generation = generation_pb2_grpc.GenerationServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as ungated_err:
            await generation.ActivateModel(gpb.ActivateModelRequest(version=ungated))
    assert ungated_err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has not been through the promotion gate" in (ungated_err.value.details() or "")

    # A version whose weights were changed after registration is refused by every replica,
    # which go on serving what they served.
    _tamper(common.data_dir / "registry" / ungated)
    serve_in_registry(common, ungated)
    await asyncio.sleep(3.0)  # the watch has delivered it; the replicas refused it
    for name in GENERATION:
        assert await _generated_by(stack, name, service) == v1
    async with open_channel(stack.target("generation-2"), common, engineer) as ch:
        generation = generation_pb2_grpc.GenerationServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as tampered_err:
            await generation.ActivateModel(gpb.ActivateModelRequest(version=ungated))
    assert tampered_err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "do not match the registry's hash" in (tampered_err.value.details() or "")

    # Each replica's metrics name what it serves and what it refused.
    metrics = _scrape(stack, "generation-1")
    assert f'clinalign_serving_loaded{{kind="policy",role="stable",version="{v1}"}} 1.0' in metrics
    assert f'clinalign_serving_refused_total{{kind="policy",version="{ungated}"}} 1.0' in metrics
    loaded = [ln for ln in metrics.splitlines() if ln.startswith("clinalign_serving_loaded{")]
    assert len(loaded) == 1  # what it served before is no longer reported


def _cli(stack: Stack, *args: str) -> str:
    env = {
        **os.environ,
        "CLINALIGN_DATA_DIR": str(stack.common.data_dir),
        "CLINALIGN_TOKENS_FILE": str(stack.common.resolved_tokens_file),
        "CLINALIGN_TRAINER_TARGET": stack.trainer,
    }
    done = subprocess.run(
        [sys.executable, "-m", "clinalign.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def _scrape(stack: Stack, name: str) -> str:
    import urllib.request

    url = f"http://127.0.0.1:{stack.ports[name][1]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


def _tamper(version_dir: Path) -> None:
    """Changes a registered version's weights on disk after registration."""
    weights = next(version_dir.glob("*.safetensors"))
    weights.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with weights.open("r+b") as fh:
        fh.seek(-8, os.SEEK_END)
        fh.write(b"\x00" * 8)


def test_every_replica_follows_the_registry(
    common: CommonSettings,
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_reward_dir: Path,
) -> None:
    second = tmp_path / "second"
    shutil.copytree(tiny_model_dir, second)
    (second / "generation_config.json").write_text('{"max_new_tokens": 8}')
    stack = Stack(common, tmp_path)
    try:
        asyncio.run(_scenario(stack, tiny_model_dir, second, tiny_reward_dir))
    finally:
        stack.stop_all()
