"""The demonstration's EHR: a SIMULATION standing in for an EHR system, which plugs
ClinAlign in as any CDS Hooks 2.0 client does.

It holds a signing key (ES384) and serves its public half as a JWKS on loopback, which the
gateway is configured to trust (``trusted_issuers``, set in the demo stack's environment
before the gateway starts); every call carries a fresh JWT whose ``aud`` is the URL called.
When a simulated clinician opens a patient's message, it calls the gateway's
``clinalign-patient-message-reply`` service with the whole prefetch (the patient, an empty
record, the message as a ``Communication``), gets a card back, and later posts the
clinician's verdict on it as CDS Hooks feedback: ``accepted``, or ``overridden`` with a
reason from the card's ``overrideReasons`` and, when the clinician rewrote the draft, their
text in the ``org.clinalign.correction`` extension.

The patients, messages and clinicians are synthetic; nothing here is patient data.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://ehr.demo.clinalign.invalid"
CLIENT_ID = "clinalign-demo-ehr"
REPLY_SERVICE = "clinalign-patient-message-reply"
REPLY_HOOK = "org.clinalign.communication-view"
CORRECTION = "org.clinalign.correction"
REASONS = "https://fhir.clinalign.org/CodeSystem/error-category"
SEARCHES = ("conditions", "medications", "allergies", "observations")


def _retry_after(value: str | None) -> float:
    """Seconds a ``Retry-After`` header asks for (delta-seconds); one when absent or a date."""
    try:
        return min(max(float(value or 1), 0.0), 60.0)
    except ValueError:
        return 1.0


class EhrError(RuntimeError):
    """The gateway refused a call; the message has its status and JSON error."""


class SimulatedEhr:
    """An EHR's CDS client: its key, its JWKS on loopback, its JWTs and its calls."""

    def __init__(self, issuer: str = ISSUER, client_id: str = CLIENT_ID) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.kid = uuid.uuid4().hex[:12]
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [public | {"kid": self.kid, "alg": "ES384", "use": "sig"}]}
        self.jwks_url = ""

    def token(self, aud: str, key: Any = None, **claims: Any) -> str:
        """A client JWT for one call to ``aud``, living two minutes; ``claims`` override
        (None removes one), ``key`` signs instead of the EHR's own (tests of refusals)."""
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "sub": self.client_id,
            "aud": aud,
            "iat": now,
            "exp": now + 120,
            "jti": uuid.uuid4().hex,
        } | claims
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"kid": self.kid, "typ": "JWT"}
        return jwt.encode(body, key or self.key, algorithm="ES384", headers=headers)

    def headers(self, url: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(url)}"}

    @contextmanager
    def serving_jwks(self) -> Iterator[str]:
        """Serves the JWKS on a loopback port until the block ends; yields its URL."""
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

    def trust(self) -> dict[str, str]:
        """The gateway's setting that trusts this EHR (its environment variable)."""
        return {"CLINALIGN_CDS_HOOKS_TRUSTED_ISSUERS": json.dumps({self.issuer: self.jwks_url})}


def message_hook(patient_id: str, message_id: str, text: str, user: str) -> dict[str, Any]:
    """The hook request an EHR sends when ``user`` opens the patient's message ``text``:
    the context and the whole prefetch (a Patient, an empty record, the Communication)."""
    patient = f"Patient/{patient_id}"
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
    return {
        "hook": REPLY_HOOK,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": user, "patientId": patient_id, "communicationId": message_id},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": patient_id, "active": True},
            **{key: empty for key in SEARCHES},
            "communication": {
                "resourceType": "Communication",
                "id": message_id,
                "status": "completed",
                "subject": {"reference": patient},
                "sender": {"reference": patient},
                "payload": [{"contentString": text}],
            },
        },
    }


def verdict(
    card: str, reason: str | None = None, comment: str = "", correction: str = ""
) -> dict[str, Any]:
    """One feedback item: ``accepted`` when no ``reason`` is given, else ``overridden``
    with that override reason code, the clinician's comment and their correction."""
    item: dict[str, Any] = {
        "card": card,
        "outcome": "accepted" if reason is None else "overridden",
        "outcomeTimestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    if reason is not None:
        item["overrideReason"] = {
            "reason": {"system": REASONS, "code": reason},
            "userComment": comment,
        }
        if correction:
            item["extension"] = {CORRECTION: correction}
    return item


RETRIED = (429, 503)  # what a CDS client retries, after the answer's Retry-After
MAX_ATTEMPTS = 10


class EhrCalls:
    """The simulated EHR's calls to one gateway over HTTP. Like a well-behaved CDS client
    it retries a call the gateway refused for load (429) or a service outage (503) after
    the answer's ``Retry-After``, each attempt with a fresh JWT."""

    def __init__(
        self,
        ehr: SimulatedEhr,
        gateway_url: str,
        timeout_s: float = 600,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.ehr = ehr
        self.base = gateway_url.rstrip("/")
        self.http = httpx2.AsyncClient(base_url=self.base, timeout=timeout_s, transport=transport)
        self.retries = 0  # calls retried, for the report

    async def close(self) -> None:
        await self.http.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            headers = self.ehr.headers(self.base + path)
            answer = await self.http.post(path, json=body, headers=headers)
            if answer.status_code not in RETRIED or attempt == MAX_ATTEMPTS:
                break
            self.retries += 1
            await asyncio.sleep(_retry_after(answer.headers.get("retry-after")))
        if answer.status_code != 200:
            raise EhrError(f"POST {path}: HTTP {answer.status_code} {answer.text[:300]}")
        found: dict[str, Any] = answer.json()
        return found

    async def services(self) -> list[dict[str, Any]]:
        answer = await self.http.get("/cds-services")
        answer.raise_for_status()
        found: list[dict[str, Any]] = answer.json()["services"]
        return found

    async def reply_card(self, hook: dict[str, Any]) -> dict[str, Any]:
        """The card the reply service returns for a message hook."""
        cards = (await self._post(f"/cds-services/{REPLY_SERVICE}", hook))["cards"]
        if len(cards) != 1:
            raise EhrError(f"expected one card, got {len(cards)}")
        card: dict[str, Any] = cards[0]
        return card

    async def feedback(self, items: list[dict[str, Any]]) -> None:
        await self._post(f"/cds-services/{REPLY_SERVICE}/feedback", {"feedback": items})


def draft_text(card: dict[str, Any]) -> str:
    """The draft a card proposes to file, as plain text (the suggestion's resource: a
    DocumentReference's attachment or a Communication's payload)."""
    for action in card["suggestions"][0]["actions"]:
        resource = action.get("resource", {})
        for content in resource.get("content", []):
            return base64.b64decode(content["attachment"]["data"]).decode()
        for payload in resource.get("payload", []):
            return str(payload["contentString"])
    raise EhrError("the card proposes no draft")


def reason_code(card: dict[str, Any], category: str, severity: str) -> str:
    """The override reason a clinician picks from the card for a fault of this category
    and severity (``ERROR_CATEGORY_…``, ``SEVERITY_…``): ``missed-emergency`` for critical
    unsafe advice, else the category's own reason."""
    if category == "ERROR_CATEGORY_UNSAFE_ADVICE" and severity == "SEVERITY_CRITICAL":
        code = "missed-emergency"
    else:
        code = category.removeprefix("ERROR_CATEGORY_").lower().replace("_", "-")
    if code not in {r["code"] for r in card["overrideReasons"]}:
        raise EhrError(f"the card offers no override reason {code!r}")
    return code
