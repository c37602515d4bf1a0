"""The prefetch fallback (CDS Hooks 2.0, "FHIR Resource Access"): what the EHR did not
prefetch, the gateway reads from the EHR's ``fhirServer`` with the bearer token of
``fhirAuthorization``, or, without one, with a token of its own where that server is
registered for SMART Backend Services (``smart``), and only what its prefetch templates
name, about the context's patient.

Each read has a deadline and a size limit, follows no redirect and must answer FHIR JSON;
a server that is slow is a 504 and one that fails or answers anything else a 502, each
naming the prefetch key, so the EHR can tell its FHIR server's fault from its own request's.
The reads run at once (one per missing key)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx2

from clinalign.cdshooks.errors import BadRequest
from clinalign.cdshooks.hooks import CheckedHook
from clinalign.cdshooks.outbound import TokenRefused, read_json
from clinalign.cdshooks.smart import BackendServices

TOKEN = re.compile(r"\{\{context\.([A-Za-z]+)\}\}")


def query(template: str, context: dict[str, str]) -> str:
    """The relative FHIR URL a prefetch template names, its ``{{context.x}}`` tokens
    replaced by the context's values (FHIR ids, checked before, so they need no escaping;
    every token a service's templates use is in its required context)."""
    return TOKEN.sub(lambda m: context[m.group(1)], template)


class FhirFetcher:
    """Reads missing prefetch from the EHR's FHIR server."""

    def __init__(
        self,
        timeout_s: float,
        max_bytes: int,
        transport: httpx2.AsyncBaseTransport | None = None,
        smart: BackendServices | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.transport = transport  # tests only
        self.smart = smart  # the gateway's own access to the FHIR servers registered there

    async def missing(self, hook: CheckedHook, issuer: str) -> dict[str, Any]:
        """The results of the service's templates whose keys the hook's prefetch lacks;
        {} when none do. ``issuer`` is the verified EHR that sent the hook: the gateway's
        own token is used only for a FHIR server registered for that EHR."""
        templates = hook.service.prefetch
        keys = [k for k in templates if hook.prefetch.get(k) is None]
        if not keys:
            return {}
        server, token = hook.fhir_server, hook.fhir_token
        smart = self.smart if server and self.smart and self.smart.serves(server, issuer) else None
        if server is None or (token is None and smart is None):
            raise BadRequest(
                f"prefetch.{keys[0]}",
                f"is missing; send the result of {templates[keys[0]]!r}, or fhirServer and "
                "fhirAuthorization for the service to read it",
            )
        urls = {k: query(templates[k], hook.context) for k in keys}
        async with httpx2.AsyncClient(
            timeout=self.timeout_s, follow_redirects=False, transport=self.transport
        ) as http:
            for attempt in (1, 2):
                bearer = token
                if bearer is None:  # SMART Backend Services (``smart`` is set: checked above)
                    assert smart is not None
                    bearer = await smart.token(http, server)
                found = await asyncio.gather(
                    *(self._read(http, server, bearer, k, urls[k]) for k in keys),
                    return_exceptions=True,
                )
                refused = any(isinstance(r, TokenRefused) for r in found)
                if not (refused and token is None and smart is not None and attempt == 1):
                    break
                smart.forget(server)  # revoked or expired early: one new token, one retry
        for result in found:  # the first key's fault, in template order, whichever came first
            if isinstance(result, BaseException):
                raise result
        return dict(zip(keys, found, strict=True))

    async def _read(
        self, http: httpx2.AsyncClient, server: str, token: str, key: str, path: str
    ) -> Any:
        return await read_json(
            http,
            "GET",
            f"{server.rstrip('/')}/{path}",
            field=f"prefetch.{key}",
            what="fhirServer",
            max_bytes=self.max_bytes,
            timeout_s=self.timeout_s,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        )
