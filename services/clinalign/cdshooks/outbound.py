"""One read from an EHR's server (its FHIR server, its token endpoint): one deadline for the
whole read, a size limit, no redirect, JSON; every fault as the gateway's error naming
``field``, the EHR's server's fault being 502 (``TokenRefused`` when it answered 401) and
its slowness 504."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2

from clinalign.cdshooks.errors import BadGateway, GatewayTimeout


class TokenRefused(BadGateway):
    """The server answered 401: the bearer token it was given is not (or no longer) good."""


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
    """The JSON ``url`` answers (``what`` names the server in messages: "fhirServer"),
    within ``timeout_s`` in all (a server trickling its answer is cut off too)."""
    try:
        async with asyncio.timeout(timeout_s):
            body = await _body(http, method, url, field, what, max_bytes, headers, request)
    except TimeoutError:
        raise GatewayTimeout(field, f"{what} did not answer within {timeout_s} s") from None
    except httpx2.TimeoutException:
        raise GatewayTimeout(field, f"{what} did not answer within {timeout_s} s") from None
    except httpx2.InvalidURL:
        raise BadGateway(field, f"{what}'s URL is not usable") from None
    except httpx2.HTTPError:
        raise BadGateway(field, f"{what} could not be reached") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadGateway(field, f"{what}'s answer is not JSON") from None


async def _body(
    http: httpx2.AsyncClient,
    method: str,
    url: str,
    field: str,
    what: str,
    max_bytes: int,
    headers: dict[str, str],
    request: dict[str, Any],
) -> bytearray:
    async with http.stream(method, url, headers=headers, **request) as response:
        if response.status_code == 401:
            raise TokenRefused(field, f"{what} refused the token (HTTP 401)")
        if response.status_code != 200:
            raise BadGateway(field, f"{what} answered HTTP {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise BadGateway(field, f"{what}'s answer exceeds {max_bytes} bytes")
    return body
