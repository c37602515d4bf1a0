"""The CDS Hooks gateway against real services for the tests, and an EHR stand-in.

- The generation service (the tiny model) and the monitor run in-process over real gRPC on
  loopback; they trust the gateway's signing key (``delegation_keys_file``).
- The gateway is served by uvicorn over plain HTTP on loopback in a thread of its own.
- ``EhrStandIn`` is a STAND-IN for an EHR, not an EHR: it signs CDS client JWTs (ES384)
  with a test key whose JWKS it serves from a real HTTP server on loopback, and builds hook
  requests with prefetch from the generation service's synthetic example record.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc.aio
import httpx2
import jsonschema
import jwt
import referencing
from cryptography.hazmat.primitives.asymmetric import ec

from clinalign.cdshooks.config import CdsHooksSettings
from clinalign.cdshooks.server import build
from clinalign.common.assertions import load_signing_key, public_jwk
from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.generation.config import GenerationSettings
from clinalign.generation.server import GenerationApp
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp
from tests.conftest import free_port, serving, serving_http

ROOT = Path(__file__).parents[1]
SCHEMAS = ROOT / "tests/data/cds_hooks"
EXAMPLE = json.loads(
    (ROOT / "services/clinalign/generation/examples/patient_bundle.json").read_text()
)
ISSUER = "https://ehr-standin.test"
USER = "Practitioner/dr-ehr-1"


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


class EhrStandIn:
    """A stand-in for an EHR: its signing key (ES384), its JWKS on loopback, its JWTs."""

    def __init__(self, issuer: str = ISSUER) -> None:
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.kid = uuid.uuid4().hex[:12]
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [public | {"kid": self.kid, "alg": "ES384", "use": "sig"}]}
        self.jwks_url = ""

    def token(self, aud: str, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "sub": "ehr-client-1",
            "aud": aud,
            "iat": now,
            "exp": now + 120,
            "jti": uuid.uuid4().hex,
        } | claims
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"kid": self.kid, "typ": "JWT"}
        return jwt.encode(body, key or self.key, algorithm="ES384", headers=headers)

    @contextmanager
    def serving_jwks(self) -> Iterator[str]:
        document = json.dumps(self.jwks).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.jwks_url = f"http://127.0.0.1:{server.server_port}/jwks.json"
        try:
            yield self.jwks_url
        finally:
            server.shutdown()
            server.server_close()


@dataclass
class CdsStack:
    url: str
    common: CommonSettings
    monitor_port: int
    ehr: EhrStandIn

    def http(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(base_url=self.url, timeout=60)

    def auth(self, path: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ehr.token(self.url + path, **claims)}"}

    def monitor_admin(self) -> grpc.aio.Channel:
        token = token_for_role(self.common.resolved_tokens_file, Role.ADMIN)
        return open_channel(f"127.0.0.1:{self.monitor_port}", self.common, token)


@asynccontextmanager
async def cds_stack(tmp_path: Path, model: Path, **gateway: Any) -> AsyncIterator[CdsStack]:
    data = tmp_path / "data"
    signing = load_signing_key(data / "cds-hooks-signing.jwk")
    keys = tmp_path / "delegation.json"
    keys.write_text(json.dumps({"cds-hooks": public_jwk(signing)}))
    generation_port, monitor_port = free_port(), free_port()
    common = CommonSettings(
        data_dir=data,
        delegation_keys_file=keys,
        generation_target=f"127.0.0.1:{generation_port}",
        monitor_target=f"127.0.0.1:{monitor_port}",
    )
    generate_tokens(common.resolved_tokens_file)
    monitor = MonitorApp(
        common,
        MonitorSettings(port=0, database_url=f"sqlite:///{tmp_path / 'monitor.db'}"),
        redact=lambda text: text,
    )
    generation = GenerationApp(
        common,
        GenerationSettings(port=0, model_path=model, device="cpu"),
    )
    ehr = EhrStandIn()
    with ehr.serving_jwks() as jwks_url:
        async with (
            serving(monitor, common, port=monitor_port),
            serving(generation, common, port=generation_port),
        ):
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
                yield CdsStack(f"http://127.0.0.1:{port}", common, monitor_port, ehr)
