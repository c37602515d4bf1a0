"""The prefetch fallback (CDS Hooks 2.0, "FHIR Resource Access"): what the EHR did not
prefetch, the gateway reads from the EHR's ``fhirServer`` with the bearer token of
``fhirAuthorization``, and only what its prefetch templates name, about the context's
patient.

Each read has a deadline and a size limit, follows no redirect and must answer FHIR JSON;
a server that is slow is a 504 and one that fails or answers anything else a 502, each
naming the prefetch key, so the EHR can tell its FHIR server's fault from its own request's.
The reads run at once (one per missing key)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2

from clinalign.cdshooks.catalogue import PREFETCH
from clinalign.cdshooks.errors import BadGateway, BadRequest, GatewayTimeout

PATIENT = "{{context.patientId}}"


def query(key: str, patient_id: str) -> str:
    """The relative FHIR URL a prefetch template names, for this patient (a FHIR id,
    checked before, so it needs no escaping)."""
    return PREFETCH[key].replace(PATIENT, patient_id)


class FhirFetcher:
    """Reads missing prefetch from the EHR's FHIR server."""

    def __init__(
        self, timeout_s: float, max_bytes: int, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.transport = transport  # tests only

    async def missing(
        self, prefetch: dict[str, Any], server: str | None, token: str | None, patient_id: str
    ) -> dict[str, Any]:
        """The results of the templates whose keys ``prefetch`` lacks; {} when none do."""
        keys = [k for k in PREFETCH if prefetch.get(k) is None]
        if not keys:
            return {}
        if server is None or token is None:
            raise BadRequest(
                f"prefetch.{keys[0]}",
                f"is missing; send the result of {PREFETCH[keys[0]]!r}, or fhirServer and "
                "fhirAuthorization for the service to read it",
            )
        async with httpx2.AsyncClient(
            timeout=self.timeout_s, follow_redirects=False, transport=self.transport
        ) as http:
            found = await asyncio.gather(
                *(self._read(http, server, token, k, patient_id) for k in keys),
                return_exceptions=True,
            )
        for result in found:  # the first key's fault, in template order, whichever came first
            if isinstance(result, BaseException):
                raise result
        return dict(zip(keys, found, strict=True))

    async def _read(
        self, http: httpx2.AsyncClient, server: str, token: str, key: str, patient_id: str
    ) -> Any:
        url = f"{server.rstrip('/')}/{query(key, patient_id)}"
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
        field = f"prefetch.{key}"
        try:
            async with http.stream("GET", url, headers=headers) as response:
                if response.status_code != 200:
                    raise BadGateway(field, f"fhirServer answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise BadGateway(
                            field, f"fhirServer's answer exceeds {self.max_bytes} bytes"
                        )
        except httpx2.TimeoutException:
            raise GatewayTimeout(
                field, f"fhirServer did not answer within {self.timeout_s} s"
            ) from None
        except httpx2.HTTPError:
            raise BadGateway(field, "fhirServer could not be reached") from None
        try:
            return json.loads(body)
        except ValueError:
            raise BadGateway(field, "fhirServer's answer is not JSON") from None
