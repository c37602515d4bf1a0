"""One read from an EHR's server (its FHIR server, its token endpoint): a deadline, a size
limit, no redirect, JSON; every fault as the gateway's error naming ``field``, the EHR's
server's fault being 502 and its slowness 504."""

from __future__ import annotations

import json
from typing import Any

import httpx2

from clinalign.cdshooks.errors import BadGateway, GatewayTimeout


async def read_json(
    http: httpx2.AsyncClient,
    method: str,
    url: str,
    *,
    field: str,
    what: str,
    max_bytes: int,
    timeout_s: float,
    headers: dict[str, str],
    **request: Any,
) -> Any:
    """The JSON ``url`` answers (``what`` names the server in messages: "fhirServer")."""
    try:
        async with http.stream(method, url, headers=headers, **request) as response:
            if response.status_code != 200:
                raise BadGateway(field, f"{what} answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise BadGateway(field, f"{what}'s answer exceeds {max_bytes} bytes")
    except httpx2.TimeoutException:
        raise GatewayTimeout(field, f"{what} did not answer within {timeout_s} s") from None
    except httpx2.HTTPError:
        raise BadGateway(field, f"{what} could not be reached") from None
    try:
        return json.loads(body)
    except ValueError:
        raise BadGateway(field, f"{what}'s answer is not JSON") from None
