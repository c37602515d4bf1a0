"""SMART Backend Services (SMART App Launch 2.x, "Backend Services"): the gateway's own
access to an EHR's FHIR server, for the prefetch fallback when a hook carries no
``fhirAuthorization``.

For each FHIR server registered in ``smart_clients`` (the EHR whose hooks may use it, the
client id that EHR gave ClinAlign, the scopes, and optionally its token endpoint, else
discovered from the server's ``/.well-known/smart-configuration``; every URL https, plain
http only on loopback), the gateway asks the token endpoint for an access token with the
client-credentials grant, authenticating with a JWT assertion it signs (ES384: ``iss`` and
``sub`` the client id, ``aud`` the token endpoint, five minutes at most, a fresh ``jti``,
``kid`` of its key). The EHR verifies it with ClinAlign's public key at ``<public
URL>/.well-known/jwks.json``, the JWKS URL registered with the EHR. Tokens are reused until
a minute before they expire, and dropped when the FHIR server refuses one (``forget``); a
token endpoint that failed is not asked again for a few seconds. Every request has the
fallback's deadline and size limit and follows no redirect; a token endpoint that refuses
or fails is the EHR's fault as far as the hook is concerned (502, naming ``fhirServer``),
a slow one 504.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx2
import jwt
from pydantic import BaseModel, Field

from clinalign.cdshooks.errors import BadGateway, GatewayError
from clinalign.cdshooks.outbound import read_json
from clinalign.common.assertions import public_jwk
from clinalign.common.oidc import OidcConfigError, check_url

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300  # the most SMART Backend Services allows
EARLY_RENEWAL_S = 60
FAILURE_TTL_S = 5.0  # a token endpoint that failed is not asked again for this long
FIELD = "fhirServer"


class SmartClient(BaseModel):
    """ClinAlign's registration with one EHR's authorization server."""

    # the trusted EHR (its JWT issuer) whose hooks may have the gateway read this server:
    # another EHR's hook naming this fhirServer gets no token of ClinAlign's for it
    issuer: str = Field(min_length=1, max_length=2_000)
    client_id: str = Field(min_length=1, max_length=256)
    scope: str = Field(
        "system/Patient.rs system/Condition.rs system/MedicationRequest.rs "
        "system/AllergyIntolerance.rs system/Observation.rs system/Communication.rs",
        min_length=1,
        max_length=2_000,
    )
    token_url: str = Field(
        "", max_length=2_000, description="Empty: discovered from smart-configuration."
    )


def server_key(url: str) -> str:
    return url.rstrip("/")


class BackendServices:
    """Access tokens for the registered FHIR servers, and the JWKS of the key that asks."""

    def __init__(
        self,
        key: jwt.PyJWK,
        clients: dict[str, SmartClient],
        timeout_s: float,
        max_bytes: int,
        clock: Any = time.time,
    ) -> None:
        """Raises OidcConfigError for a server or token URL that is not https (plain http
        only on loopback)."""
        self.key = key
        self.clients = {
            server_key(check_url(url, "smart_clients")): c for url, c in clients.items()
        }
        for c in self.clients.values():
            if c.token_url:
                check_url(c.token_url, "smart_clients token_url")
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        self._failures: dict[str, tuple[GatewayError, float]] = {}
        self._endpoints: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def serves(self, server: str, issuer: str) -> bool:
        """Whether the gateway may read ``server`` with its own token for this EHR."""
        client = self.clients.get(server_key(server))
        return client is not None and client.issuer == issuer

    def forget(self, server: str) -> None:
        """Drops the server's token (it refused it): the next read asks for a new one."""
        self._tokens.pop(server_key(server), None)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.key)]}

    async def token(self, http: httpx2.AsyncClient, server: str) -> str:
        """A live access token for ``server`` (registered), asked for when none is."""
        name = server_key(server)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:  # one token request per server at a time; the others reuse it
            cached = self._tokens.get(name)
            if cached and cached[1] > self.clock():
                return cached[0]
            failed = self._failures.get(name)
            if failed and failed[1] > self.clock():  # a failing endpoint is asked once a while
                raise failed[0]
            client = self.clients[name]
            try:
                endpoint = client.token_url or await self._discover(http, name)
                token, lifetime = await self._ask(http, client, endpoint)
            except GatewayError as err:
                self._failures[name] = (err, self.clock() + FAILURE_TTL_S)
                raise
            self._tokens[name] = (token, self.clock() + max(lifetime - EARLY_RENEWAL_S, 0))
            return token

    def assertion(self, client: SmartClient, endpoint: str) -> str:
        now = int(self.clock())
        claims = {
            "iss": client.client_id,
            "sub": client.client_id,
            "aud": endpoint,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self.key.key_id, "typ": "JWT"}
        return jwt.encode(claims, self.key.key, algorithm=self.key.algorithm_name, headers=headers)

    async def _discover(self, http: httpx2.AsyncClient, server: str) -> str:
        if server not in self._endpoints:
            document = await self._json(
                http, "GET", f"{server}/.well-known/smart-configuration", "smart-configuration"
            )
            found = document.get("token_endpoint")
            try:
                endpoint = check_url(found if isinstance(found, str) else "", "token_endpoint")
            except OidcConfigError:
                raise BadGateway(
                    FIELD, "the FHIR server's smart-configuration has no https token_endpoint"
                ) from None
            self._endpoints[server] = endpoint
        return self._endpoints[server]

    async def _ask(
        self, http: httpx2.AsyncClient, client: SmartClient, endpoint: str
    ) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "scope": client.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(client, endpoint),
        }
        answer = await self._json(http, "POST", endpoint, "token endpoint", data=form)
        token, kind = answer.get("access_token"), answer.get("token_type")
        if not isinstance(token, str) or not token or str(kind).lower() != "bearer":
            raise BadGateway(FIELD, "the token endpoint's answer holds no bearer access_token")
        expires = answer.get("expires_in", 300)
        lifetime = float(expires) if isinstance(expires, int | float) and expires > 0 else 300.0
        return token, lifetime

    async def _json(
        self, http: httpx2.AsyncClient, method: str, url: str, what: str, **request: Any
    ) -> dict[str, Any]:
        document = await read_json(
            http,
            method,
            url,
            field=FIELD,
            what=f"the {what}",
            max_bytes=self.max_bytes,
            timeout_s=self.timeout_s,
            headers={"Accept": "application/json"},
            **request,
        )
        if not isinstance(document, dict):
            raise BadGateway(FIELD, f"the {what}'s answer is not a JSON object")
        return document
