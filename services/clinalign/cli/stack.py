"""Runs the five services as local processes on loopback: the embedded default that
``clinalign up`` and ``clinalign demo`` use, and that end-to-end tests start for real.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clinalign.cdshooks.config import CdsHooksSettings
from clinalign.common.auth import generate_tokens
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings, ServiceSettings
from clinalign.console.config import ConsoleSettings
from clinalign.generation.config import GenerationSettings
from clinalign.monitor.config import MonitorSettings
from clinalign.preference.config import PreferenceSettings
from clinalign.reward.config import RewardSettings
from clinalign.trainer.config import TrainerSettings

SERVICES: dict[str, tuple[str, type[ServiceSettings]]] = {
    "generation": ("clinalign.generation.v1.GenerationService", GenerationSettings),
    "reward": ("clinalign.reward.v1.RewardService", RewardSettings),
    "preference": ("clinalign.preference.v1.PreferenceService", PreferenceSettings),
    "trainer": ("clinalign.trainer.v1.TrainerService", TrainerSettings),
    "monitor": ("clinalign.monitor.v1.MonitorService", MonitorSettings),
}

# The HTTP front doors `clinalign up` starts beside the services: name -> settings class
# (the package is the name without its hyphen: clinalign.cdshooks).
FRONT_DOORS: dict[str, type[ServiceSettings]] = {
    "console": ConsoleSettings,
    "cds-hooks": CdsHooksSettings,
}


def env_name(name: str) -> str:
    """A service's or front door's name as its settings' prefix spells it: CDS_HOOKS."""
    return name.upper().replace("-", "_")


@dataclass
class Endpoint:
    service: str
    full_name: str
    grpc_port: int
    metrics_port: int
    host: str = "127.0.0.1"
    server_name: str = ""  # the Service's name when host is one replica's address

    @property
    def target(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def replicas(ep: Endpoint) -> list[Endpoint]:
    """One endpoint per replica behind ``ep``: for a ``dns:///`` host (a headless Service),
    each address it resolves to; otherwise ``ep`` itself."""
    if not ep.host.startswith("dns:///"):
        return [ep]
    name = ep.host.removeprefix("dns:///")
    try:
        infos = socket.getaddrinfo(name, ep.grpc_port, type=socket.SOCK_STREAM)
    except OSError:
        return [ep]  # unresolvable: reported as unreachable under its name
    addresses = sorted({str(info[4][0]) for info in infos})
    return [
        dataclasses.replace(ep, host=f"[{a}]" if ":" in a else a, server_name=name)
        for a in addresses
    ] or [ep]


@dataclass
class HealthReport:
    service: str
    target: str
    process: str  # SERVING | NOT_SERVING | UNREACHABLE
    service_status: str  # the service name's own entry
    serving: str = ""  # the model versions a generation or reward replica has loaded


def endpoints(common: CommonSettings) -> list[Endpoint]:
    """Where each service listens, from its settings (ports from CLINALIGN_<SVC>_PORT)."""
    result = []
    for name, (full_name, settings_type) in SERVICES.items():
        s = settings_type()
        result.append(Endpoint(name, full_name, s.port, s.metrics_port, common.host))
    return result


def front_door_urls(common: CommonSettings) -> dict[str, str]:
    """Where each front door listens (HTTP), from its settings."""
    return {name: f"http://{common.host}:{cls().port}" for name, cls in FRONT_DOORS.items()}


def ensure_delegation_keys(common: CommonSettings) -> Path:
    """The front doors' public keys, which the services trust for the assertions each
    door signs (the console for its development sign-in, the CDS Hooks gateway for the EHR
    users it verified); each door's key is made on first use."""
    from clinalign.cdshooks.server import signing_key_path as gateway_key
    from clinalign.common.assertions import load_signing_key, public_jwk
    from clinalign.console.server import signing_key_path as console_key

    keys = {
        "console": console_key(common, ConsoleSettings()),
        "cds-hooks": gateway_key(common, CdsHooksSettings()),
    }
    path = common.data_dir / "delegation-keys.json"
    public = {door: public_jwk(load_signing_key(key)) for door, key in keys.items()}
    path.write_text(json.dumps(public, indent=2))
    return path


def ensure_tokens(common: CommonSettings) -> Path:
    path = common.resolved_tokens_file
    if not path.exists():
        generate_tokens(path)
    return path


class Stack:
    """The five service processes, started together and stopped together."""

    def __init__(self, common: CommonSettings, extra_env: dict[str, str] | None = None) -> None:
        self.common = common
        self.endpoints = endpoints(common)
        self.extra_env = extra_env or {}
        self.front_doors = front_door_urls(common)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log_dir = common.data_dir / "logs"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CLINALIGN_DATA_DIR"] = str(self.common.data_dir.resolve())
        env["CLINALIGN_TOKENS_FILE"] = str(self.common.resolved_tokens_file.resolve())
        for ep in self.endpoints:
            # Peers find each other on the ports this stack starts them on.
            env[f"CLINALIGN_{ep.service.upper()}_TARGET"] = ep.target
        # Replicas serve what the registry serves, as in a deployment.
        env.setdefault("CLINALIGN_GENERATION_FOLLOW_REGISTRY", "true")
        env.setdefault("CLINALIGN_REWARD_FOLLOW_REGISTRY", "true")
        if self.common.delegation_keys_file is None:
            env["CLINALIGN_DELEGATION_KEYS_FILE"] = str(
                (self.common.data_dir / "delegation-keys.json").resolve()
            )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        self.common.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ensure_tokens(self.common)
        if self.common.delegation_keys_file is None:
            ensure_delegation_keys(self.common)
        env = self.env()
        for name in [*(ep.service for ep in self.endpoints), *self.front_doors]:
            log = (self.log_dir / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"clinalign.{name.replace('-', '')}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them
            )
        (self.common.data_dir / "endpoints.json").write_text(
            json.dumps(
                {
                    **{
                        e.service: {"grpc": e.target, "metrics_port": e.metrics_port}
                        for e in self.endpoints
                    },
                    **{name: {"http": url} for name, url in self.front_doors.items()},
                },
                indent=2,
            )
        )

    def wait_ready(self, timeout_s: float = 180.0) -> list[HealthReport]:
        """Waits until every process reports SERVING; raises if one exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with status {proc.returncode}; see "
                        f"{self.log_dir / (name + '.log')}"
                    )
            reports = asyncio.run(check_health(self.endpoints, self.common, timeout_s=2.0))
            doors_up = self._front_doors_up()
            if all(r.process == "SERVING" for r in reports) and doors_up:
                return reports
            if time.monotonic() > deadline:
                waiting = [r.service for r in reports if r.process != "SERVING"]
                waiting += [] if doors_up else list(self.front_doors)
                raise TimeoutError(f"services not SERVING after {timeout_s:.0f}s: {waiting}")
            time.sleep(0.5)

    def _front_doors_up(self) -> bool:
        import httpx2

        for url in self.front_doors.values():
            try:
                if httpx2.get(f"{url}/healthz", timeout=2).status_code != 200:
                    return False
            except httpx2.HTTPError:
                return False
        return True

    def stop(self, grace_s: float = 15.0) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


async def check_health(
    eps: list[Endpoint], common: CommonSettings, timeout_s: float = 3.0
) -> list[HealthReport]:
    """Asks each service's grpc.health.v1 endpoint for the process and the service status."""

    async def one(ep: Endpoint) -> HealthReport:
        channel = open_channel(ep.target, common, token=None, server_name=ep.server_name)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            statuses = []
            for name in ("", ep.full_name):
                resp = await stub.Check(
                    health_pb2.HealthCheckRequest(service=name), timeout=timeout_s
                )
                statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
            serving = await _loaded_versions(ep, common, timeout_s)
            return HealthReport(ep.service, ep.target, statuses[0], statuses[1], serving)
        except grpc.aio.AioRpcError:
            return HealthReport(ep.service, ep.target, "UNREACHABLE", "UNREACHABLE")
        finally:
            await channel.close()

    return list(await asyncio.gather(*(one(ep) for ep in eps)))


async def _loaded_versions(ep: Endpoint, common: CommonSettings, timeout_s: float) -> str:
    """What a generation or reward replica has loaded (its ListModels), e.g.
    ``policy-v3 90%, policy-v4 10%`` or ``reward-v2, cost cost-v1``; "" for the others or
    when the tokens file cannot be read."""
    from clinalign.common.auth import Role, token_for_role

    if ep.service not in ("generation", "reward"):
        return ""
    try:
        token = token_for_role(common.resolved_tokens_file, Role.SERVICE)
    except (OSError, ValueError, LookupError):
        return ""
    async with open_channel(ep.target, common, token, server_name=ep.server_name) as channel:
        if ep.service == "generation":
            from clinalign.generation.v1 import generation_pb2, generation_pb2_grpc

            models = await generation_pb2_grpc.GenerationServiceStub(channel).ListModels(
                generation_pb2.ListModelsRequest(), timeout=timeout_s
            )
            return ", ".join(
                f"{m.model.ref.version} {m.traffic_fraction:.0%}" for m in models.models
            )
        from clinalign.reward.v1 import reward_pb2, reward_pb2_grpc

        reward = await reward_pb2_grpc.RewardServiceStub(channel).ListModels(
            reward_pb2.ListModelsRequest(), timeout=timeout_s
        )
        parts = [reward.active_version or "(no reward model)"]
        if reward.active_cost_version:
            parts.append(f"cost {reward.active_cost_version}")
        return ", ".join(parts)


async def wait_serving(
    target: str, common: CommonSettings, full_name: str, timeout_s: float = 60.0
) -> None:
    """Waits until one service's own health entry reports SERVING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with open_channel(target, common, None) as channel:
            try:
                resp = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=full_name), timeout=1
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{full_name} at {target} not SERVING after {timeout_s:.0f}s")
