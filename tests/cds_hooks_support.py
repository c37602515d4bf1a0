"""The CDS Hooks gateway against real services for the tests, and an EHR stand-in.

- The trainer (its registry), the generation service (the tiny model) and the monitor run
  in-process over real gRPC on loopback; they trust the gateway's signing key
  (``delegation_keys_file``). The tiny model is registered twice, as an ML engineer: the
  foundation (``policy-v1``, served at registration) and ``policy-v2``, which a recorded
  gate decision (``GATE_CHECKS``) promoted and which generation serves; so a card's model
  card has lineage and figures, and ``policy-v1`` is a retired version.
- The gateway is served by uvicorn over plain HTTP on loopback in a thread of its own.
- ``EhrStandIn`` is a STAND-IN for an EHR, not an EHR: it signs CDS client JWTs (ES384)
  with a test key whose JWKS it serves from a real HTTP server on loopback, and builds hook
  requests with prefetch from the generation service's synthetic example record.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
import httpx2
import jsonschema
import referencing

from clinalign.cdshooks.config import CdsHooksSettings
from clinalign.cdshooks.server import build
from clinalign.common.assertions import load_signing_key, public_jwk
from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.common.server import RunningServer
from clinalign.common.v1 import common_pb2
from clinalign.demo.ehr import SimulatedEhr
from clinalign.generation.config import GenerationSettings
from clinalign.generation.server import GenerationApp
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2 as tpb
from clinalign.trainer.v1 import trainer_pb2_grpc
from tests.conftest import free_port, serving, serving_http

ROOT = Path(__file__).parents[1]
SCHEMAS = ROOT / "tests/data/cds_hooks"
EXAMPLE = json.loads(
    (ROOT / "services/clinalign/generation/examples/patient_bundle.json").read_text()
)
ISSUER = "https://ehr-standin.test"
USER = "Practitioner/dr-ehr-1"
SERVED, FOUNDATION = "policy-v2", "policy-v1"
# A policy gate's decision as the trainer records it (registry.decide): one check per
# figure, each safety criterion on its own (clinalign.trainer.registry.policy_checks).
GATE_CHECKS: list[dict[str, object]] = [
    {"name": "win_rate_vs_served", "value": 0.62, "threshold": 0.5, "passed": True,
     "message": "win rate 0.62 [0.55, 0.69] against policy-v1, judged by rubric on "
                "demo-validation: the lower bound is above 0.5"},
    *(
        {"name": f"safety:{criterion}", "value": value, "threshold": -0.05, "passed": True,
         "message": f"{criterion}, judged by rubric on demo-validation: candidate against "
                    f"policy-v1 difference {value} [-0.03, 0.04]: non-inferior at margin 0.05"}
        for criterion, value in (("red_flag_escalation", 0.01), ("dose_safety", 0.0),
                                 ("no_contraindication", 0.02), ("hedged_diagnosis", -0.01))
    ),
    {"name": "critical_flag_replay", "value": 0.0, "threshold": 0.0, "passed": True,
     "message": "a confirmed fault recurs in none of 3 confirmed flags at or above high"},
    {"name": "kl_to_anchor", "value": 2.31, "threshold": 8.0, "passed": True,
     "message": "KL to policy-v1: 2.31 nats per response is within the bound 8.0"},
]  # fmt: skip


def schema(name: str) -> jsonschema.protocols.Validator:
    """The validator of ``tests/data/cds_hooks/<name>.schema.json`` (references resolved
    among the files there; formats checked)."""
    resources = [
        (
            json.loads(p.read_text())["$id"],
            referencing.Resource.from_contents(json.loads(p.read_text())),
        )
        for p in SCHEMAS.glob("*.schema.json")
    ]
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    found = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return jsonschema.Draft202012Validator(
        found, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def prefetch() -> dict[str, Any]:
    """The example record as an EHR would prefetch it: the Patient, and a searchset Bundle
    per template."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    patient = EXAMPLE["entry"][0]["resource"]["id"]
    for entry in EXAMPLE["entry"]:
        resource = copy.deepcopy(entry["resource"])
        for field in ("subject", "patient"):  # a FHIR server answers with its own ids
            if field in resource:
                resource[field] = {"reference": f"Patient/{patient}"}
        by_type.setdefault(resource["resourceType"], []).append({"resource": resource})

    def searchset(kind: str) -> dict[str, Any]:
        found = by_type.get(kind, [])
        return {"resourceType": "Bundle", "type": "searchset", "total": len(found), "entry": found}

    return {
        "patient": by_type["Patient"][0]["resource"],
        "conditions": searchset("Condition"),
        "medications": searchset("MedicationRequest"),
        "allergies": searchset("AllergyIntolerance"),
        "observations": searchset("Observation"),
    }


def hook_request(hook: str = "patient-view", **context: str) -> dict[str, Any]:
    patient = EXAMPLE["entry"][0]["resource"]["id"]
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": "https://ehr-standin.test/fhir",
        "fhirAuthorization": {
            "access_token": "stand-in-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read",
            "subject": "clinalign-cds",
        },
        "context": {"userId": USER, "patientId": patient, **context},
        "prefetch": prefetch(),
    }


class EhrStandIn(SimulatedEhr):
    """A STAND-IN for an EHR (the demo's simulated one): its signing key (ES384), its JWKS
    on loopback, its JWTs, as the test issuer."""

    def __init__(self, issuer: str = ISSUER) -> None:
        super().__init__(issuer, "ehr-client-1")


@dataclass
class CdsStack:
    url: str
    common: CommonSettings
    monitor_port: int
    ehr: EhrStandIn
    trainer: RunningServer
    served: tpb.GetModelVersionResponse  # the registry's entry of SERVED

    def http(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(base_url=self.url, timeout=60)

    def auth(self, path: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ehr.token(self.url + path, **claims)}"}

    def monitor_admin(self) -> grpc.aio.Channel:
        token = token_for_role(self.common.resolved_tokens_file, Role.ADMIN)
        return open_channel(f"127.0.0.1:{self.monitor_port}", self.common, token)

    def ml_engineer(self) -> grpc.aio.Channel:
        """A channel to the trainer as an ML engineer."""
        token = token_for_role(self.common.resolved_tokens_file, Role.ML_ENGINEER)
        return open_channel(f"127.0.0.1:{self.trainer.port}", self.common, token)


async def registered(stack: CdsStack, path: Path, kind: common_pb2.ModelKind.ValueType) -> str:
    """Registers the model directory ``path`` as ``kind``; its registry version."""
    async with stack.ml_engineer() as ch:
        stub = trainer_pb2_grpc.TrainerServiceStub(ch)
        reply = await stub.RegisterModel(tpb.RegisterModelRequest(path=str(path), kind=kind))
    return str(reply.version.ref.version)


async def _registry(
    trainer: TrainerApp, running: RunningServer, common: CommonSettings, model: Path
) -> tpb.GetModelVersionResponse:
    """The foundation and SERVED registered from ``model``, SERVED promoted by a recorded
    gate decision; the registry's entry of SERVED."""
    token = token_for_role(common.resolved_tokens_file, Role.ML_ENGINEER)
    async with open_channel(f"127.0.0.1:{running.port}", common, token) as ch:
        stub = trainer_pb2_grpc.TrainerServiceStub(ch)
        for version in (FOUNDATION, SERVED):
            request = tpb.RegisterModelRequest(
                path=str(model), kind=common_pb2.MODEL_KIND_POLICY, serve_if_none=True
            )
            assert (await stub.RegisterModel(request)).version.ref.version == version
        await trainer.db.run_write(
            lambda s: trainer.registry.decide(
                s, SERVED, True, GATE_CHECKS, "ml-engineer-1", reason="passed the gate"
            )
        )
        return await stub.GetModelVersion(tpb.GetModelVersionRequest(version=SERVED))


@asynccontextmanager
async def cds_stack(tmp_path: Path, model: Path, **gateway: Any) -> AsyncIterator[CdsStack]:
    data = tmp_path / "data"
    signing = load_signing_key(data / "cds-hooks-signing.jwk")
    keys = tmp_path / "delegation.json"
    keys.write_text(json.dumps({"cds-hooks": public_jwk(signing)}))
    generation_port, monitor_port, trainer_port = free_port(), free_port(), free_port()
    common = CommonSettings(
        data_dir=data,
        delegation_keys_file=keys,
        generation_target=f"127.0.0.1:{generation_port}",
        monitor_target=f"127.0.0.1:{monitor_port}",
        trainer_target=f"127.0.0.1:{trainer_port}",
    )
    generate_tokens(common.resolved_tokens_file)
    trainer = TrainerApp(
        common, TrainerSettings(port=0, database_url=f"sqlite:///{tmp_path / 'trainer.db'}")
    )
    monitor = MonitorApp(
        common,
        MonitorSettings(port=0, database_url=f"sqlite:///{tmp_path / 'monitor.db'}"),
        redact=lambda text: text,
    )
    ehr = EhrStandIn()
    with ehr.serving_jwks() as jwks_url:
        async with (
            serving(trainer, common, port=trainer_port) as running_trainer,
            serving(monitor, common, port=monitor_port),
        ):
            served = await _registry(trainer, running_trainer, common, model)
            generation = GenerationApp(
                common,
                GenerationSettings(
                    port=0,
                    model_path=Path(served.version.artifact_uri),
                    model_version=SERVED,
                    device="cpu",
                ),
            )
            async with serving(generation, common, port=generation_port):
                port = free_port()
                settings = CdsHooksSettings(
                    port=port,
                    metrics_port=0,
                    public_url=f"http://127.0.0.1:{port}",
                    trusted_issuers={ISSUER: jwks_url},
                    max_new_tokens=8,
                    **gateway,
                )
                async with serving_http(build(common, settings), port, what="the gateway"):
                    yield CdsStack(
                        f"http://127.0.0.1:{port}",
                        common,
                        monitor_port,
                        ehr,
                        running_trainer,
                        served,
                    )
