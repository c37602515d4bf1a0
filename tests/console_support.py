"""The console against real services for the tests: the preference and monitor services
in-process over real gRPC on loopback, the console served by uvicorn over HTTPS on
``localhost`` (its session cookie is Secure) in a thread of its own, the services trusting
the console's signing key for its development sign-in, and, optionally, a real OpenID
provider (``tests.oidc_idp``) as the issuer. Seeding helpers put labelling tasks in the
store and production outputs in the monitor, as the demo's tools and generation would."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc.aio
import httpx2
from google.protobuf.timestamp_pb2 import Timestamp

from clinalign.common.assertions import load_signing_key, public_jwk
from clinalign.common.auth import Role, generate_tokens, token_for_role, token_for_service
from clinalign.common.certificates import issue
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.console.config import ConsoleSettings
from clinalign.console.server import build
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp
from clinalign.monitor.v1 import monitor_pb2 as mpb
from clinalign.monitor.v1 import monitor_pb2_grpc
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.preference.v1 import preference_pb2_grpc
from tests.conftest import free_port, serving, serving_http

GUIDE = "rubric-2026-11"
SAFE_ANSWER = (
    "Chest pain with a cough may be a chest infection. "
    "Call 999 now if the pain is crushing or you are breathless."
)
UNSAFE_ANSWER = "You definitely have a chest infection. Take 2 g of paracetamol every hour."
GUIDE_TEXT = "Prefer the answer that escalates red flags, states safe doses and hedges diagnoses."


@dataclass
class ConsoleStack:
    url: str  # https://localhost:<port>
    ca_file: Path
    common: CommonSettings
    preference_port: int
    monitor_port: int

    def http(self) -> httpx2.AsyncClient:
        """A browser-like HTTP client: follows no redirects by itself, keeps cookies. (Async:
        the services run on the test's event loop, which a blocking client would stall.)"""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx2.AsyncClient(base_url=self.url, verify=context, timeout=30)

    def admin(self, service: str) -> grpc.aio.Channel:
        token = token_for_role(self.common.resolved_tokens_file, Role.ADMIN)
        port = self.preference_port if service == "preference" else self.monitor_port
        return open_channel(f"127.0.0.1:{port}", self.common, token)

    def as_service(self, service: str, target: str) -> grpc.aio.Channel:
        token = token_for_service(self.common.resolved_tokens_file, service)
        port = self.preference_port if target == "preference" else self.monitor_port
        return open_channel(f"127.0.0.1:{port}", self.common, token)


@asynccontextmanager
async def console_stack(
    tmp_path: Path, issuer: str | None = None, **console: object
) -> AsyncIterator[ConsoleStack]:
    data = tmp_path / "data"
    signing = load_signing_key(data / "console-signing.jwk")
    keys = tmp_path / "delegation.json"
    keys.write_text(json.dumps({"console": public_jwk(signing)}))
    extra = {"oidc_issuer": issuer, "oidc_audience": "clinalign"} if issuer else {}
    preference_port, monitor_port = free_port(), free_port()
    common = CommonSettings(
        data_dir=data,
        delegation_keys_file=keys,
        preference_target=f"127.0.0.1:{preference_port}",
        monitor_target=f"127.0.0.1:{monitor_port}",
        trainer_target=f"127.0.0.1:{free_port()}",  # none: the dashboard says so
        **extra,
    )
    generate_tokens(common.resolved_tokens_file)
    preference = PreferenceApp(
        common,
        PreferenceSettings(port=0, database_url=f"sqlite:///{tmp_path / 'preference.db'}"),
        redact=lambda text: text,
    )
    monitor = MonitorApp(
        common,
        MonitorSettings(
            port=0,
            database_url=f"sqlite:///{tmp_path / 'monitor.db'}",
            feedback_interval_s=0.5,
            feedback_guideline_version=GUIDE,
        ),
        redact=lambda text: text,
    )
    async with (
        serving(preference, common, port=preference_port) as pref,
        serving(monitor, common, port=monitor_port) as mon,
    ):
        wired = common
        tls = issue(tmp_path / "tls", ["localhost"])
        port = free_port()
        settings = ConsoleSettings(
            port=port, metrics_port=0, public_url=f"https://localhost:{port}", **console
        )
        app = build(wired, settings)
        async with serving_http(app, port, tls, "the console"):
            yield ConsoleStack(
                f"https://localhost:{port}", tls["ca.crt"], wired, pref.port, mon.port
            )


async def seed_tasks(stack: ConsoleStack, pairs: int, overlap: int = 2) -> list[str]:
    """``pairs`` labelling tasks (a question, two answers), as the labelling tool would."""
    async with stack.admin("preference") as ch:
        stub = preference_pb2_grpc.PreferenceServiceStub(ch)
        await stub.PublishGuidelines(ppb.PublishGuidelinesRequest(version=GUIDE, text=GUIDE_TEXT))
        prompts = await stub.SubmitPrompts(
            ppb.SubmitPromptsRequest(
                idempotency_key="console-test-prompts",
                prompts=[
                    ppb.PromptInput(
                        text=f"I have had a cough for {i + 2} days and now chest pain. "
                        "What should I do?",
                        source=ppb.PROMPT_SOURCE_CURATED,
                    )
                    for i in range(pairs)
                ],
            )
        )
        answers = await stub.SubmitResponses(
            ppb.SubmitResponsesRequest(
                idempotency_key="console-test-answers",
                responses=[
                    ppb.ResponseInput(prompt_id=pid, text=text, model_version="policy-v1")
                    for pid in prompts.ids
                    for text in (
                        SAFE_ANSWER,
                        UNSAFE_ANSWER,
                    )
                ],
            )
        )
        ids = list(answers.ids)
        await stub.CreateTasks(
            ppb.CreateTasksRequest(
                idempotency_key="console-test-tasks",
                batch_id="console-test",
                tasks=[
                    ppb.TaskSpec(prompt_id=pid, response_ids=ids[2 * i : 2 * i + 2])
                    for i, pid in enumerate(prompts.ids)
                ],
                overlap=overlap,
                guideline_version=GUIDE,
            )
        )
    return list(prompts.ids)


async def seed_outputs(stack: ConsoleStack, n: int, version: str = "policy-v2") -> list[str]:
    """``n`` production outputs, reported as the generation service reports them."""
    now = Timestamp()
    now.FromDatetime(datetime.now(UTC))
    outputs = [
        mpb.ProductionOutput(
            output_id=f"out-{i:04d}",
            prompt="What dose of ibuprofen can I take for a sprained ankle?",
            text="Take 400 mg of ibuprofen up to three times a day with food. "
            "See a GP if it is no better in a week.",
            model_version=version,
            latency_s=0.2,
            completion_tokens=30,
            create_time=now,
            task="patient_question" if i % 2 else "free_text",
        )
        for i in range(n)
    ]
    async with stack.as_service("generation", "monitor") as ch:
        await monitor_pb2_grpc.MonitorServiceStub(ch).RecordOutputs(
            mpb.RecordOutputsRequest(outputs=outputs)
        )
    return [o.output_id for o in outputs]
