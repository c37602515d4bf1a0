"""SMART Backend Services: a hook with no prefetch and no ``fhirAuthorization`` is read from
the EHR's FHIR server with a token the gateway gets itself, over real HTTP.

``SmartEhrStandIn`` is a STAND-IN for an EHR's authorization and FHIR servers (not an
EHR): its token endpoint verifies the gateway's client assertion as SMART Backend Services
requires (signature by a key from the gateway's ``/.well-known/jwks.json``, fetched over
HTTP; ``iss`` = ``sub`` = the client id; ``aud`` the token endpoint; at most five minutes;
a ``jti`` never seen) and issues a bearer token, which its FHIR reads require.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest

from clinalign.cdshooks.smart import ASSERTION_TYPE
from clinalign.demo.ehr import message_hook
from tests.cds_hooks_support import ISSUER, USER, CdsStack, cds_stack, schema

REPLY = "/cds-services/clinalign-patient-message-reply"
CLIENT_ID = "clinalign-at-hospital"
QUESTION = "Can I take my blood pressure tablet at night instead of the morning?"


class SmartEhrStandIn:
    def __init__(self) -> None:
        self.gateway_url = ""
        self.url = ""
        self.tokens: list[str] = []
        self.revoked: set[str] = set()
        self.jtis: set[str] = set()
        self.reads: list[tuple[str, str]] = []  # (path, bearer token)
        hook = message_hook("p-7", "msg-7", QUESTION, USER)
        self.resources = {
            "/fhir/Patient/p-7": hook["prefetch"]["patient"],
            "/fhir/Communication/msg-7": hook["prefetch"]["communication"],
        }
        self.empty = hook["prefetch"]["conditions"]

    def token_endpoint(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return 400, {"error": "invalid_client"}
        assertion = form["client_assertion"]
        with urllib.request.urlopen(self.gateway_url + "/.well-known/jwks.json") as answer:
            keys = jwt.PyJWKSet.from_dict(json.loads(answer.read()))
        key = keys[jwt.get_unverified_header(assertion)["kid"]]
        claims = jwt.decode(
            assertion,
            key.key,
            algorithms=["ES384", "RS384"],
            audience=self.url + "/auth/token",
            issuer=CLIENT_ID,
            options={"require": ["iss", "sub", "aud", "exp", "jti"]},
        )
        if claims["sub"] != CLIENT_ID or claims["exp"] - claims["iat"] > 300:
            return 401, {"error": "invalid_client"}
        if claims["jti"] in self.jtis:
            return 401, {"error": "invalid_client", "error_description": "jti replayed"}
        self.jtis.add(claims["jti"])
        self.tokens.append(f"smart-token-{len(self.tokens) + 1}")
        body = {"access_token": self.tokens[-1], "token_type": "bearer", "expires_in": 300}
        return 200, body | {"scope": form.get("scope", "")}

    def read(self, path: str, authorization: str) -> tuple[int, dict[str, Any]]:
        token = authorization.removeprefix("Bearer ")
        self.reads.append((path.split("?")[0], token))
        if token not in self.tokens or token in self.revoked:
            return 401, {"resourceType": "OperationOutcome"}
        return 200, self.resources.get(path.split("?")[0], self.empty)

    @contextmanager
    def serving(self) -> Iterator[str]:
        ehr = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/fhir/.well-known/smart-configuration":
                    self.answer(200, {"token_endpoint": ehr.url + "/auth/token"})
                else:
                    self.answer(*ehr.read(self.path, self.headers.get("Authorization", "")))

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
                form = dict(urllib.parse.parse_qsl(raw))
                if self.path == "/auth/refuse":
                    self.answer(401, {"error": "invalid_client"})
                else:
                    self.answer(*ehr.token_endpoint(form))

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{server.server_port}"
        try:
            yield self.url
        finally:
            server.shutdown()
            server.server_close()


@pytest.fixture
def smart_ehr() -> Iterator[SmartEhrStandIn]:
    ehr = SmartEhrStandIn()
    with ehr.serving():
        yield ehr


@pytest.fixture
async def stack(tmp_path: Path, tiny_model_dir: Path, smart_ehr: SmartEhrStandIn):  # type: ignore[no-untyped-def]
    clients = {
        smart_ehr.url + "/fhir": {"issuer": ISSUER, "client_id": CLIENT_ID},  # discovered
        smart_ehr.url + "/fhir-refusing": {
            "issuer": ISSUER,
            "client_id": CLIENT_ID,
            "token_url": smart_ehr.url + "/auth/refuse",
        },
    }
    async with cds_stack(tmp_path, tiny_model_dir, smart_clients=clients) as running:
        smart_ehr.gateway_url = running.url
        yield running


def unfetched(server: str) -> dict[str, Any]:
    """A message hook with no prefetch and no fhirAuthorization, only the fhirServer."""
    body = message_hook("p-7", "msg-7", QUESTION, USER)
    del body["prefetch"]
    body["fhirServer"] = server
    schema("request").validate(body)
    return body


async def post(stack: CdsStack, body: dict[str, Any]) -> Any:
    async with stack.http() as http:
        return await http.post(REPLY, json=body, headers=stack.auth(REPLY))


async def test_missing_prefetch_is_read_with_the_gateways_own_token(
    stack: CdsStack, smart_ehr: SmartEhrStandIn
) -> None:
    async with stack.http() as http:
        keys = (await http.get("/.well-known/jwks.json")).json()["keys"]
    assert [(k["kty"], k["crv"], k["alg"]) for k in keys] == [("EC", "P-384", "ES384")]
    assert "d" not in keys[0]  # the public half only

    for _ in range(2):
        answer = await post(stack, unfetched(smart_ehr.url + "/fhir"))
        assert answer.status_code == 200, answer.text
        schema("response").validate(answer.json())
    # one token for both hooks, asked for with a fresh assertion, used for every read
    assert smart_ehr.tokens == ["smart-token-1"]
    paths = {p for p, _ in smart_ehr.reads}
    assert {"/fhir/Patient/p-7", "/fhir/Communication/msg-7", "/fhir/Condition"} <= paths
    assert {t for _, t in smart_ehr.reads} == {"smart-token-1"}

    # the EHR revokes it: the gateway's read is refused, it asks for a new token once and
    # reads again
    smart_ehr.revoked.add("smart-token-1")
    answer = await post(stack, unfetched(smart_ehr.url + "/fhir"))
    assert answer.status_code == 200, answer.text
    assert smart_ehr.tokens == ["smart-token-1", "smart-token-2"]


async def test_a_refused_token_or_an_unregistered_server_is_the_right_error(
    stack: CdsStack, smart_ehr: SmartEhrStandIn
) -> None:
    refused = await post(stack, unfetched(smart_ehr.url + "/fhir-refusing"))
    assert refused.status_code == 502
    schema("error").validate(refused.json())
    assert refused.json()["error"]["field"] == "fhirServer"
    # a server registered for nothing, and no fhirAuthorization: the EHR must prefetch
    unknown = await post(stack, unfetched(smart_ehr.url + "/other-fhir"))
    assert unknown.status_code == 400
    assert unknown.json()["error"]["field"] == "prefetch.patient"
    assert smart_ehr.reads == []
    async with stack.http() as http:
        assert (await http.get("/healthz")).status_code == 200
