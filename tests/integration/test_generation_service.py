"""GenerationService through real gRPC on the tiny model: a real Generate, provenance,
validation, and the monitor hand-off that never fails a call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
from sqlalchemy import create_engine, text

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.hashing import weights_hash
from clinalign.generation.config import GenerationSettings
from clinalign.generation.reporter import DROPPED
from clinalign.generation.server import GenerationApp
from clinalign.generation.v1 import generation_pb2 as pb
from clinalign.generation.v1 import generation_pb2_grpc
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp
from clinalign.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from tests.conftest import client, free_port, serving

Token = Callable[[Role], str]
QUESTION = "I have had a fever and a cough for three days. What should I do?"
BUNDLE = (
    Path(__file__).parents[2] / "services/clinalign/generation/examples/patient_bundle.json"
).read_text()


def _settings(model: Path, **kw: object) -> GenerationSettings:
    return GenerationSettings(port=0, model_path=model, device="cpu", **kw)  # type: ignore[arg-type]


def _request(prompt: str = QUESTION, **sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        input=pb.GenerationInput(prompt=prompt),
        sampling=pb.SamplingParams(**{"max_new_tokens": 12, "temperature": 0.0, **sampling}),
    )


async def test_generate_returns_text_with_full_provenance(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    app = GenerationApp(common, _settings(tiny_model_dir, report_to_monitor=False))
    async with serving(app, common) as running:
        async with client(running, common, token(Role.EHR_CLIENT)) as ch:
            stub = generation_pb2_grpc.GenerationServiceStub(ch)
            first = (await stub.Generate(_request())).completion
            again = (await stub.Generate(_request())).completion
            listed = await stub.ListModels(pb.ListModelsRequest())
    assert first.completion_tokens > 0 and first.prompt_tokens > 0
    assert first.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS)
    assert first.text == again.text  # greedy decoding is deterministic
    p = first.provenance
    assert p.output_id.startswith("out-") and p.output_id != again.provenance.output_id
    assert p.model_name == "clinalign-policy" and p.model_version == "foundation"
    assert p.weights_hash == weights_hash(tiny_model_dir)
    assert "AI-generated draft" in p.notice and "clinician" in p.notice
    assert p.create_time.seconds > 0
    assert listed.models[0].model.weights_hash == p.weights_hash
    assert listed.models[0].traffic_fraction == 1.0


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GenerateRequest(), "input"),
        (_request(prompt="   "), "input.prompt"),
        (_request(top_p=1.5), "sampling.top_p"),
        (_request(temperature=3.0), "sampling.temperature"),
        (_request(max_new_tokens=100_000), "sampling.max_new_tokens"),
        (_request(top_k=-1), "sampling.top_k"),
        (_request(stop=[""]), "sampling.stop[0]"),
        (_request(prompt="word " * 5000), "input.prompt"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    common: CommonSettings,
    token: Token,
    tiny_model_dir: Path,
    request_: pb.GenerateRequest,
    field: str,
) -> None:
    app = GenerationApp(common, _settings(tiny_model_dir, report_to_monitor=False))
    async with serving(app, common) as running:
        async with client(running, common, token(Role.EHR_CLIENT)) as ch:
            stub = generation_pb2_grpc.GenerationServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Generate(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"{field}:")


async def test_outputs_reach_the_monitor(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    monitor = MonitorApp(common, MonitorSettings(port=0))
    async with serving(monitor, common) as mon:
        wired = common.model_copy(update={"monitor_target": f"127.0.0.1:{mon.port}"})
        app = GenerationApp(wired, _settings(tiny_model_dir))
        async with serving(app, wired) as running:
            async with client(running, common, token(Role.EHR_CLIENT)) as ch:
                stub = generation_pb2_grpc.GenerationServiceStub(ch)
                ids = [
                    (await stub.Generate(_request())).completion.provenance.output_id
                    for _ in range(3)
                ]
                summary = pb.FhirContext(bundle_json=BUNDLE, task=pb.CLINICAL_TASK_SUMMARY)
                fhir = await stub.Generate(
                    pb.GenerateRequest(
                        input=pb.GenerationInput(fhir=summary),
                        sampling=pb.SamplingParams(max_new_tokens=4, temperature=0.0),
                    )
                )
                ids.append(fhir.completion.provenance.output_id)
            async with client(mon, common, token(Role.ML_ENGINEER)) as ch:
                mstub = monitor_pb2_grpc.MonitorServiceStub(ch)
                for _ in range(50):
                    stats = await mstub.GetStats(monitor_pb2.GetStatsRequest())
                    if stats.versions and stats.versions[0].outputs == len(ids):
                        break
                    await asyncio.sleep(0.1)
                listed = await mstub.ListOutputs(monitor_pb2.ListOutputsRequest())
    assert stats.versions[0].model_version == "foundation"
    assert stats.versions[0].outputs == 4
    assert stats.versions[0].latency_s.count == 4
    # Each output's task as generation reported it: the FHIR template's, or a raw prompt's.
    tasks = {s.output.output_id: s.output.task for s in listed.outputs}
    assert tasks == {
        ids[0]: "free_text",
        ids[1]: "free_text",
        ids[2]: "free_text",
        ids[3]: "summary",
    }


async def test_no_acknowledged_output_is_lost_to_a_monitor_outage_or_a_restart(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    """The monitor is down while the service answers; the service is restarted; the monitor
    comes up: every output the service answered is recorded, each exactly once."""
    port = free_port()
    wired = common.model_copy(update={"monitor_target": f"127.0.0.1:{port}"})
    dropped = DROPPED.labels("spool_full")._value.get()
    answered: list[str] = []
    for _ in range(2):  # the second round is the restarted service, its spool kept
        app = GenerationApp(wired, _settings(tiny_model_dir))
        assert app.reporter is not None
        async with serving(app, wired) as running:
            async with client(running, common, token(Role.EHR_CLIENT)) as ch:
                stub = generation_pb2_grpc.GenerationServiceStub(ch)
                for _ in range(3):
                    resp = await stub.Generate(_request(), timeout=30)
                    answered.append(resp.completion.provenance.output_id)
            assert app.reporter.pending == len(answered)  # spooled, none dropped
    monitor = MonitorApp(common, MonitorSettings(port=port))
    async with serving(monitor, common, port=port):
        app = GenerationApp(wired, _settings(tiny_model_dir))
        assert app.reporter is not None
        async with serving(app, wired):
            await asyncio.wait_for(app.reporter.drained(), 30)
    engine = create_engine(f"sqlite:///{common.data_dir / 'monitor.db'}")
    with engine.connect() as conn:
        recorded = [r[0] for r in conn.execute(text("SELECT output_id FROM outputs"))]
    engine.dispose()
    assert sorted(recorded) == sorted(answered) and len(set(answered)) == 6
    assert DROPPED.labels("spool_full")._value.get() == dropped
