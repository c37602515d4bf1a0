"""CDS Hooks gateway benchmark (issue 25): hook requests with their prefetch from
``--clients`` concurrent EHR clients (16), against the same drafts through
``GenerationService.Generate`` directly, in the same run.

The trainer, the generation service, the monitor and the gateway run as real processes on
loopback; the model (``--model``: the embedded foundation model when it is built, else the
tiny test model) is registered in the trainer's registry first and served from there, so
each card carries its model card's facts, as in production (read once per version and
cached by the gateway). Each hook carries a fresh EHR JWT (ES384, from an EHR stand-in
whose JWKS the gateway fetches over HTTP) and the example patient's prefetch; the direct
calls send the very Bundle the gateway builds from that prefetch, with the same sampling
(the service's defaults, ``--max-new-tokens`` 64), as an EHR client token. Each round runs
the two modes one after the other, ``--requests`` per client each; the figures are
per-request latencies, p50 and p95, and the medians over ``--rounds`` (3).

``overhead`` = median of the rounds' hook p50 / direct p50. Target: at most 1.15.

    .venv/bin/python bench/cds.py [--clients 16] [--requests 8] [--rounds 3] [--model DIR]

Last line JSON: {"name": "cds_hooks", "overhead": ..., "cards_per_s": ..., ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cds_hooks_support import ISSUER, EhrStandIn, hook_request
from tests.conftest import free_port, wait_http_ok

from clinalign.cdshooks.catalogue import SERVICES
from clinalign.cdshooks.hooks import parse_hook
from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.generation.v1 import generation_pb2 as gpb
from clinalign.generation.v1 import generation_pb2_grpc
from clinalign.trainer.v1 import trainer_pb2, trainer_pb2_grpc

SERVICE = "clinalign-patient-summary"
TRAINER = "clinalign.trainer.v1.TrainerService"


@contextmanager
def stack(root: Path, model: Path, jwks_url: str, max_new_tokens: int) -> Iterator[dict[str, Any]]:
    from clinalign.cli.stack import ensure_delegation_keys, wait_serving

    data = root / "data"
    data.mkdir(parents=True)
    ports = {name: free_port() for name in ("trainer", "generation", "monitor", "cds_hooks")}
    common = CommonSettings(data_dir=data)
    generate_tokens(common.resolved_tokens_file)
    keys = ensure_delegation_keys(common)
    gateway = f"http://127.0.0.1:{ports['cds_hooks']}"
    env = {
        **os.environ,
        "CLINALIGN_DATA_DIR": str(data),
        "CLINALIGN_DELEGATION_KEYS_FILE": str(keys),
        # its start-up model; it then serves what the registry serves (the same weights)
        "CLINALIGN_GENERATION_MODEL_PATH": str(model),
        "CLINALIGN_GENERATION_DEVICE": "cpu",
        "CLINALIGN_CDS_HOOKS_TRUSTED_ISSUERS": json.dumps({ISSUER: jwks_url}),
        "CLINALIGN_CDS_HOOKS_PUBLIC_URL": gateway,
        "CLINALIGN_CDS_HOOKS_MAX_NEW_TOKENS": str(max_new_tokens),
        **{f"CLINALIGN_{n.upper()}_PORT": str(p) for n, p in ports.items()},
        **{f"CLINALIGN_{n.upper()}_METRICS_PORT": str(free_port()) for n in ports},
        "CLINALIGN_GENERATION_TARGET": f"127.0.0.1:{ports['generation']}",
        "CLINALIGN_MONITOR_TARGET": f"127.0.0.1:{ports['monitor']}",
        "CLINALIGN_TRAINER_TARGET": f"127.0.0.1:{ports['trainer']}",
    }

    def start(module: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", f"clinalign.{module}"],
            env=env,
            stdout=(root / f"{module}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )

    procs = [start("trainer")]
    try:
        try:
            trainer = f"127.0.0.1:{ports['trainer']}"
            asyncio.run(wait_serving(trainer, common, TRAINER, timeout_s=120))
            asyncio.run(register(trainer, common, model))
            procs += [start(module) for module in ("generation", "monitor", "cdshooks")]
            wait_http_ok(f"{gateway}/healthz", 180, procs)
            asyncio.run(  # and the model loaded
                wait_serving(
                    f"127.0.0.1:{ports['generation']}",
                    common,
                    "clinalign.generation.v1.GenerationService",
                    timeout_s=180,
                )
            )
        except BaseException:
            for log in sorted(root.glob("*.log")):  # the temporary directory goes with it
                print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
        yield {
            "gateway": gateway,
            "generation": f"127.0.0.1:{ports['generation']}",
            "common": common,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


async def register(target: str, common: CommonSettings, model: Path) -> None:
    """Registers ``model`` as the served policy (the first, which serves without the gate)."""
    token = token_for_role(common.resolved_tokens_file, Role.ML_ENGINEER)
    async with open_channel(target, common, token) as ch:
        await trainer_pb2_grpc.TrainerServiceStub(ch).RegisterModel(
            trainer_pb2.RegisterModelRequest(
                path=str(model), kind=common_pb2.MODEL_KIND_POLICY, serve_if_none=True
            ),
            timeout=120,
        )


async def direct(
    target: str, common: CommonSettings, clients: int, requests: int, max_new: int
) -> list[float]:
    """Latencies of Generate calls carrying the Bundle the gateway would build."""
    call = parse_hook(hook_request(), SERVICES[SERVICE])
    request = gpb.GenerateRequest(
        input=gpb.GenerationInput(
            fhir=gpb.FhirContext(bundle_json=call.bundle_json, task=call.service.task)
        ),  # type: ignore[arg-type]
        sampling=gpb.SamplingParams(max_new_tokens=max_new),
    )
    token = token_for_role(common.resolved_tokens_file, Role.EHR_CLIENT)
    out: list[float] = []

    async def client() -> None:
        async with open_channel(target, common, token) as ch:
            stub = generation_pb2_grpc.GenerationServiceStub(ch)
            for _ in range(requests):
                started = time.perf_counter()
                await stub.Generate(request, timeout=300)
                out.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(clients)))
    return out


async def hooks(gateway: str, ehr: EhrStandIn, clients: int, requests: int) -> list[float]:
    """Latencies of hook calls, each with a fresh JWT and hookInstance."""
    path = f"/cds-services/{SERVICE}"
    out: list[float] = []

    async def client() -> None:
        async with httpx2.AsyncClient(base_url=gateway, timeout=300) as http:
            for _ in range(requests):
                body = hook_request() | {"hookInstance": str(uuid.uuid4())}
                headers = {"Authorization": f"Bearer {ehr.token(gateway + path)}"}
                started = time.perf_counter()
                reply = await http.post(path, json=body, headers=headers)
                out.append(time.perf_counter() - started)
                if reply.status_code != 200:
                    raise RuntimeError(f"a hook failed: HTTP {reply.status_code} {reply.text}")

    await asyncio.gather(*(client() for _ in range(clients)))
    return out


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=20, method="inclusive")
    return {
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * q[-1], 1),
        "per_s": round(len(latencies) / wall, 2),
    }


async def one_round(s: dict[str, Any], ehr: EhrStandIn, args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    d = await direct(s["generation"], s["common"], args.clients, args.requests, args.max_new_tokens)
    d_wall = time.monotonic() - started
    started = time.monotonic()
    h = await hooks(s["gateway"], ehr, args.clients, args.requests)
    h_wall = time.monotonic() - started
    return {"direct": summary(d, d_wall), "hook": summary(h, h_wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--model",
        type=Path,
        help="a policy directory; default: the foundation model, else the tiny one",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            built = CommonSettings().data_dir / "models" / "foundation"
            if (built / "config.json").is_file():
                model = built
            else:
                from clinalign.foundation import build_tiny_model

                model = Path(tmp) / "tiny"
                build_tiny_model(model)
        ehr = EhrStandIn()
        rounds = []
        with (
            ehr.serving_jwks() as jwks_url,
            stack(Path(tmp) / "stack", model, jwks_url, args.max_new_tokens) as s,
        ):
            asyncio.run(
                one_round(s, ehr, argparse.Namespace(**{**vars(args), "requests": 1}))
            )  # warm-up
            for _ in range(args.rounds):
                rounds.append(asyncio.run(one_round(s, ehr, args)))
                print(json.dumps(rounds[-1]), file=sys.stderr)
    ratio = statistics.median(r["hook"]["p50_ms"] / r["direct"]["p50_ms"] for r in rounds)
    print(
        json.dumps(
            {
                "name": "cds_hooks",
                "model": str(model),
                "clients": args.clients,
                "max_new_tokens": args.max_new_tokens,
                "overhead": round(ratio, 3),
                "target_overhead": 1.15,
                "hook_p50_ms": statistics.median(r["hook"]["p50_ms"] for r in rounds),
                "hook_p95_ms": statistics.median(r["hook"]["p95_ms"] for r in rounds),
                "direct_p50_ms": statistics.median(r["direct"]["p50_ms"] for r in rounds),
                "direct_p95_ms": statistics.median(r["direct"]["p95_ms"] for r in rounds),
                "cards_per_s": statistics.median(r["hook"]["per_s"] for r in rounds),
                "direct_per_s": statistics.median(r["direct"]["per_s"] for r in rounds),
                "rounds": rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
