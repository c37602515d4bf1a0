"""End to end: `clinalign up` starts the five services as real processes; `clinalign
status` sees them SERVING; auth, metrics and a trace across two services hold; Ctrl-C
stops everything cleanly. Runs on the tiny model."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from clinalign.cli.stack import FRONT_DOORS, SERVICES, env_name
from clinalign.common.auth import Role, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.generation.v1 import generation_pb2, generation_pb2_grpc
from clinalign.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from clinalign.preference.v1 import preference_pb2, preference_pb2_grpc
from clinalign.reward.v1 import reward_pb2, reward_pb2_grpc
from clinalign.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from tests.conftest import free_ports

QUESTION = "My ankle is swollen after a fall yesterday. How should I care for it?"


@pytest.fixture
def stack(tmp_path: Path, tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path / "data"
    shutil.copytree(tiny_model_dir, data / "models" / "foundation")
    env = dict(os.environ)
    ports = {}
    chosen = iter(free_ports(2 * (len(SERVICES) + len(FRONT_DOORS))))
    for name in [*SERVICES, *FRONT_DOORS]:
        ports[name] = next(chosen)
        env[f"CLINALIGN_{env_name(name)}_PORT"] = str(ports[name])
        env[f"CLINALIGN_{env_name(name)}_METRICS_PORT"] = str(next(chosen))
        if name in SERVICES:
            env[f"CLINALIGN_{name.upper()}_TARGET"] = f"127.0.0.1:{ports[name]}"
    env.update(
        CLINALIGN_DATA_DIR=str(data),
        CLINALIGN_OTEL_ENABLED="true",
        CLINALIGN_OTEL_EXPORTER="file",
        CLINALIGN_GENERATION_DEVICE="cpu",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "clinalign.cli", "up", "--no-bootstrap"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "all services up" in line:
            break
    if not any("all services up" in line for line in lines):
        stop(proc)
        logs = "".join(p.read_text() for p in (data / "logs").glob("*.log"))
        pytest.fail("stack did not come up:\n" + "".join(lines) + logs[-4000:])
    ports = {name: port for name, port in ports.items() if name in SERVICES}
    info = {"proc": proc, "env": env, "data": data, "ports": ports, "startup": lines}
    try:
        yield info
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, so that the supervisor stops the services it started (each in a session of
    its own: a SIGKILL to it alone would leave them running, holding their ports); SIGKILL
    only if it has not ended within a minute."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _common(info: dict[str, Any]) -> CommonSettings:
    return CommonSettings(
        data_dir=info["data"],
        **{f"{n}_target": f"127.0.0.1:{p}" for n, p in info["ports"].items()},  # type: ignore[arg-type]
    )


async def _exercise(info: dict[str, Any]) -> dict[str, Any]:
    common = _common(info)
    tokens = common.resolved_tokens_file
    gen_target = common.generation_target
    results: dict[str, Any] = {}
    for label, tok in (("none", None), ("clinician", token_for_role(tokens, Role.CLINICIAN))):
        async with open_channel(gen_target, common, tok) as ch:
            try:
                await generation_pb2_grpc.GenerationServiceStub(ch).Generate(
                    generation_pb2.GenerateRequest(
                        input=generation_pb2.GenerationInput(prompt=QUESTION)
                    ),
                    timeout=30,
                )
                results[label] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                results[label] = err.code()
    ehr = token_for_role(tokens, Role.EHR_CLIENT)
    async with open_channel(gen_target, common, ehr) as ch:
        resp = await generation_pb2_grpc.GenerationServiceStub(ch).Generate(
            generation_pb2.GenerateRequest(
                input=generation_pb2.GenerationInput(prompt=QUESTION),
                sampling=generation_pb2.SamplingParams(max_new_tokens=16, temperature=0.0),
            ),
            timeout=60,
        )
    results["completion"] = resp.completion
    admin = token_for_role(tokens, Role.ADMIN)
    # One real RPC on every other service, as an admin.
    async with open_channel(common.reward_target, common, admin) as ch:
        await reward_pb2_grpc.RewardServiceStub(ch).ListModels(reward_pb2.ListModelsRequest())
    async with open_channel(common.preference_target, common, admin) as ch:
        await preference_pb2_grpc.PreferenceServiceStub(ch).RegisterAnnotator(
            preference_pb2.RegisterAnnotatorRequest(
                annotator=preference_pb2.Annotator(id="ann-e2e", role="nurse")
            )
        )
    async with open_channel(common.trainer_target, common, admin) as ch:
        await trainer_pb2_grpc.TrainerServiceStub(ch).ListModelVersions(
            trainer_pb2.ListModelVersionsRequest()
        )
    async with open_channel(common.monitor_target, common, admin) as ch:
        stub = monitor_pb2_grpc.MonitorServiceStub(ch)
        for _ in range(100):
            stats = await stub.GetStats(monitor_pb2.GetStatsRequest())
            if stats.versions:
                break
            await asyncio.sleep(0.1)
        results["monitor_outputs"] = sum(v.outputs for v in stats.versions)
    return results


def _spans(data: Path, service: str) -> list[dict[str, Any]]:
    path = data / "traces" / f"{service}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_up_status_auth_metrics_trace_and_clean_stop(stack: dict[str, Any]) -> None:
    data, env = stack["data"], stack["env"]
    status = subprocess.run(
        [sys.executable, "-m", "clinalign.cli", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    rows = [line.split() for line in status.stdout.splitlines()[1:]]
    assert {r[0]: r[2] for r in rows} == {name: "SERVING" for name in SERVICES}
    # Reward has no model yet: its process serves, its own health entry says NOT_SERVING.
    assert {r[0]: r[3] for r in rows}["reward"] == "NOT_SERVING"
    # What each replica has loaded: the foundation (the registry serves no policy yet).
    serving = {r[0]: " ".join(r[4:]) for r in rows}
    assert serving["generation"].endswith(" 100%"), serving
    assert serving["reward"] == "(no reward model)"
    assert serving["trainer"] == serving["monitor"] == ""
    assert stat_mode(data / "tokens.json") == 0o600

    results = asyncio.run(_exercise(stack))
    assert results["none"] == grpc.StatusCode.UNAUTHENTICATED
    assert results["clinician"] == grpc.StatusCode.PERMISSION_DENIED
    completion = results["completion"]
    assert completion.completion_tokens > 0
    assert results["monitor_outputs"] == 1

    for name in SERVICES:
        port = env[f"CLINALIGN_{env_name(name)}_METRICS_PORT"]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert f'service="{name}"' in body.decode() and b"rpc_server_requests_total" in body

    # The console: up, its development sign-in offered (no issuer here), its headers set,
    # its requests counted.
    console = f"http://127.0.0.1:{env['CLINALIGN_CONSOLE_PORT']}"
    signin = urllib.request.urlopen(f"{console}/signin", timeout=5)
    assert b"Development sign-in" in signin.read()
    assert "script-src 'self'" in signin.headers["Content-Security-Policy"]
    assert any(console in line for line in stack["startup"])
    body = urllib.request.urlopen(
        f"http://127.0.0.1:{env['CLINALIGN_CONSOLE_METRICS_PORT']}/metrics", timeout=5
    ).read()
    assert b'clinalign_console_requests_total{method="GET",route="/signin",status="200"}' in body

    # The CDS Hooks gateway: up, its discovery answering (no EHR is trusted here, so a
    # hook would be refused, which the gateway's own tests cover).
    gateway = f"http://127.0.0.1:{env['CLINALIGN_CDS_HOOKS_PORT']}"
    discovery = json.loads(urllib.request.urlopen(f"{gateway}/cds-services", timeout=5).read())
    assert {s["hook"] for s in discovery["services"]} == {
        "patient-view",
        "encounter-discharge",
        "org.clinalign.communication-view",
    }

    gen_metrics = env["CLINALIGN_GENERATION_METRICS_PORT"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{gen_metrics}/metrics", timeout=5).read()
    assert b"gen_ai_server_time_to_first_token_seconds_count" in body

    # The EHR-style command-line call with a FHIR Bundle, streamed; and a broken Bundle.
    bundle = (
        Path(__file__).parents[2] / "services/clinalign/generation/examples/patient_bundle.json"
    )
    cli = [sys.executable, "-m", "clinalign.cli", "generate", "--max-new-tokens", "8"]
    fhir = subprocess.run(
        [*cli, "--fhir", str(bundle), "--task", "summary", "--stream", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fhir.returncode == 0, fhir.stderr
    drafted = json.loads(fhir.stdout.splitlines()[-1])
    assert drafted["provenance"]["prompt_template_version"].startswith("summary/")
    broken = data / "broken.json"
    broken.write_text('{"resourceType": "Bundle", "entry": []}')
    refused = subprocess.run(
        [*cli, "--fhir", str(broken), "--task", "summary"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT: input.fhir.bundle_json: Bundle has no Patient" in refused.stderr

    # One trace id runs from the Generate call into the monitor's RecordOutputs.
    gen_spans = _spans(data, "generation")
    generate = [
        s
        for s in gen_spans
        if s["name"].endswith("/Generate") and s["kind"] == "SERVER" and s["status"] != "ERROR"
    ]
    assert generate, gen_spans
    trace_ids = {s["trace_id"] for s in generate}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        record = [s for s in _spans(data, "monitor") if s["name"].endswith("/RecordOutputs")]
        if record:
            break
        time.sleep(0.2)
    assert record and record[0]["trace_id"] in trace_ids

    proc = stack["proc"]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    stopped = [line for line in out.splitlines() if line.startswith("stopped:")]
    assert stopped and all(part.endswith("=0") for part in stopped[0][9:].split(", "))

    # Privacy: neither the prompt nor the output text appears in any log or trace.
    text = "".join(p.read_text() for p in (data / "logs").glob("*.log"))
    text += "".join(p.read_text() for p in (data / "traces").glob("*.jsonl"))
    assert QUESTION not in text and "ankle" not in text
    assert completion.text.strip() == "" or completion.text.strip() not in text


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
