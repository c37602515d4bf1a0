"""``clinalign demo``: the pipeline end to end through the real services over gRPC.

This release runs the part of the loop that exists: build the foundation model, start the
five services, register the model in the trainer's registry, answer simulated EHR
requests through GenerationService, and confirm the monitor received every output. The
closed-loop issue grows it into SFT → preferences → reward model → PPO → promotion →
flags → retraining.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2

# Synthetic patient questions (no real patients) as an EHR patient portal would send them.
EHR_QUESTIONS = (
    "I have had a fever and a dry cough for three days. What should I do?",
    "My ankle is swollen after I twisted it playing football yesterday. How should I care for it?",
    "I was prescribed amoxicillin for a chest infection. How should I take it?",
    "I keep getting headaches in the afternoon. When should I see a doctor?",
    "What should I do to recover after being discharged following an appendix operation?",
)


def run_demo(common: CommonSettings, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    from clinalign.cli import _model_env, bootstrap, foundation_dir
    from clinalign.stack import Stack

    started = time.monotonic()
    model_dir = foundation_dir(common)
    echo("== 1. foundation model")
    bootstrap(data_dir=common.data_dir)
    echo("== 2. starting the five services")
    stack = Stack(common, extra_env=_model_env(common))
    stack.start()
    try:
        reports = stack.wait_ready()
        for r in reports:
            echo(f"   {r.service:<11} {r.target:<17} {r.process} (service: {r.service_status})")
        common = common.model_copy(
            update={f"{ep.service}_target": ep.target for ep in stack.endpoints}
        )
        figures = asyncio.run(_exercise(common, str(model_dir.resolve()), echo))
    finally:
        echo("== stopping services")
        stack.stop()
    figures["wall_s"] = round(time.monotonic() - started, 1)
    echo(f"== done in {figures['wall_s']} s")
    return figures


async def _exercise(
    common: CommonSettings, model_dir: str, echo: Callable[[str], Any]
) -> dict[str, Any]:
    from clinalign.client import channel_for
    from clinalign.generation.v1 import generation_pb2, generation_pb2_grpc
    from clinalign.monitor.v1 import monitor_pb2, monitor_pb2_grpc
    from clinalign.trainer.v1 import trainer_pb2, trainer_pb2_grpc

    echo("== 3. registering the foundation model")
    async with channel_for("trainer", Role.ML_ENGINEER, common) as ch:
        registered = await trainer_pb2_grpc.TrainerServiceStub(ch).RegisterModel(
            trainer_pb2.RegisterModelRequest(
                path=model_dir, kind=common_pb2.MODEL_KIND_POLICY, serve_if_none=True
            ),
            timeout=60,
        )
    version = registered.version
    echo(f"   {version.ref.version} weights {version.weights_hash[:12]}")

    echo("== 4. simulated EHR traffic → GenerationService.Generate")
    output_ids = []
    async with channel_for("generation", Role.EHR_CLIENT, common) as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        for question in EHR_QUESTIONS:
            resp = await stub.Generate(
                generation_pb2.GenerateRequest(
                    input=generation_pb2.GenerationInput(prompt=question),
                    sampling=generation_pb2.SamplingParams(max_new_tokens=80, temperature=0.0),
                ),
                timeout=120,
            )
            c = resp.completion
            output_ids.append(c.provenance.output_id)
            echo(f"   Q: {question}\n   A: {c.text.strip()}\n      ({c.provenance.output_id})")

    echo("== 5. the monitor received every output")
    recorded = 0
    async with channel_for("monitor", Role.ML_ENGINEER, common) as ch:
        stub_m = monitor_pb2_grpc.MonitorServiceStub(ch)
        for _ in range(40):
            stats = await stub_m.GetStats(monitor_pb2.GetStatsRequest(), timeout=10)
            recorded = sum(v.outputs for v in stats.versions)
            if recorded >= len(output_ids):
                break
            await asyncio.sleep(0.25)
    echo(f"   monitor outputs recorded: {recorded} of {len(output_ids)}")
    return {
        "name": "demo",
        "registered_version": version.ref.version,
        "generations": len(output_ids),
        "monitor_outputs": recorded,
    }
