"""Serving propagation benchmark (issue 22): how long from a change of what the registry
serves to the last replica serving it.

A trainer and ``--replicas`` generation replicas (``follow_registry`` on) run as real
processes on loopback. The policy alternates between two registered versions
``--changes`` times; each change is a gate decision written to the trainer's store as the
gate writes it (the gate itself, minutes of sampling and judging, is not what is measured
here). After each change every replica is asked ``ListModels`` every 20 ms until all
report the new version; the figure is the time from the change's commit to the last
replica reporting it.

That time includes the replica loading the version: by default the tiny test model
(``build_tiny_model``; a few MB, loaded in tens of milliseconds), so it is close to the
control plane's own time (the watch's poll interval, the stream, the switch). ``--model
PATH`` measures with real weights instead. Target: p95 under 5 s, loading aside.

Rounds: ``--rounds`` runs of the whole sequence on fresh processes; the JSON reports each
round's p50/p95/max and the medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, default_sqlite_url
from clinalign.common.v1 import common_pb2
from clinalign.generation.v1 import generation_pb2, generation_pb2_grpc
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.server import MIGRATIONS
from clinalign.trainer.v1 import trainer_pb2, trainer_pb2_grpc

POLL_S = 0.02
TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    service: str, common: CommonSettings, trainer: str, port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CLINALIGN_DATA_DIR": str(common.data_dir),
        "CLINALIGN_TOKENS_FILE": str(common.resolved_tokens_file),
        "CLINALIGN_TRAINER_TARGET": trainer,
        f"CLINALIGN_{service.upper()}_PORT": str(port),
        f"CLINALIGN_{service.upper()}_METRICS_PORT": str(_free_port()),
        "CLINALIGN_GENERATION_FOLLOW_REGISTRY": "true",
        "CLINALIGN_GENERATION_REPORT_TO_MONITOR": "false",
        "CLINALIGN_GENERATION_TORCH_THREADS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", f"clinalign.{service}"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _decide(common: CommonSettings, version: str) -> None:
    """A passing gate decision, written as the gate writes it."""
    db = Database(default_sqlite_url(common.data_dir, "trainer"), registry.Base, MIGRATIONS)
    try:
        with db.sessions.begin() as session:
            registry.Registry(common.data_dir / "registry").decide(
                session, version, True, [], "bench", reason="serving_propagation bench"
            )
    finally:
        db.dispose()


async def _served(target: str, common: CommonSettings, token: str) -> str:
    async with open_channel(target, common, token) as channel:
        reply = await generation_pb2_grpc.GenerationServiceStub(channel).ListModels(
            generation_pb2.ListModelsRequest(), timeout=5
        )
    return ",".join(m.model.ref.version for m in reply.models)


async def _wait_all(targets: list[str], common: CommonSettings, token: str, version: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    pending = set(targets)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sorted(pending)} never served {version}")
        for target in list(pending):
            try:
                if await _served(target, common, token) == version:
                    pending.discard(target)
            except Exception:  # a replica still starting
                pass
        if pending:
            await asyncio.sleep(POLL_S)


async def _round(model: Path, replicas: int, changes: int, work: Path) -> list[float]:
    common = CommonSettings(data_dir=work / "data")
    common.data_dir.mkdir(parents=True)
    generate_tokens(common.resolved_tokens_file)
    token = token_for_role(common.resolved_tokens_file, Role.ML_ENGINEER)
    procs: list[subprocess.Popen[bytes]] = []
    trainer = f"127.0.0.1:{_free_port()}"
    try:
        procs.append(
            _start("trainer", common, trainer, int(trainer.rsplit(":")[1]), work / "trainer.log")
        )
        from clinalign.cli.stack import wait_serving

        await wait_serving(trainer, common, "clinalign.trainer.v1.TrainerService")
        async with open_channel(trainer, common, token) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            versions = []
            for serve in (True, False):
                reply = await stub.RegisterModel(
                    trainer_pb2.RegisterModelRequest(
                        path=str(model), kind=common_pb2.MODEL_KIND_POLICY, serve_if_none=serve
                    )
                )
                versions.append(reply.version.ref.version)
        targets = []
        for i in range(replicas):
            port = _free_port()
            procs.append(_start("generation", common, trainer, port, work / f"generation-{i}.log"))
            targets.append(f"127.0.0.1:{port}")
        for target in targets:
            await wait_serving(target, common, "clinalign.generation.v1.GenerationService", 180)
        await _wait_all(targets, common, token, versions[0])
        times = []
        for i in range(changes):
            version = versions[(i + 1) % 2]
            await asyncio.to_thread(_decide, common, version)
            changed = time.monotonic()
            await _wait_all(targets, common, token, version)
            times.append(time.monotonic() - changed)
        return times
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, help="a policy directory; default the tiny model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from clinalign.foundation import build_tiny_model

            model = Path(tmp) / "tiny"
            build_tiny_model(model)
        rounds = []
        for r in range(args.rounds):
            work = Path(tmp) / f"round-{r}"
            work.mkdir()
            times = asyncio.run(_round(model, args.replicas, args.changes, work))
            rounds.append(
                {
                    "p50_s": statistics.median(times),
                    "p95_s": statistics.quantiles(times, n=20, method="inclusive")[-1],
                    "max_s": max(times),
                }
            )
            print(json.dumps({"round": r, **{k: round(v, 3) for k, v in rounds[-1].items()}}))
            shutil.rmtree(work, ignore_errors=True)
    line = {
        "bench": "serving_propagation",
        "replicas": args.replicas,
        "changes_per_round": args.changes,
        "rounds": args.rounds,
        "model": "tiny" if args.model is None else str(args.model),
        "p50_s": round(statistics.median(r["p50_s"] for r in rounds), 3),
        "p95_s": round(statistics.median(r["p95_s"] for r in rounds), 3),
        "max_s": round(max(r["max_s"] for r in rounds), 3),
        "target_p95_s": 5.0,
    }
    line["meets_target"] = line["p95_s"] < 5.0
    print(json.dumps(line))


if __name__ == "__main__":
    main()
