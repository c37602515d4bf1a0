"""The gateway's HTTP surface (Starlette, like the console), CDS Hooks 2.0:

- ``GET /cds-services``: discovery (public: it names services, no patient data);
- ``POST /cds-services/{id}``: a hook, answered with one card holding the draft;
- ``POST /cds-services/{id}/feedback``: outcomes of those cards; overrides become flags;
- ``GET /model-cards/{name}/{version}``: what the card's ``source.url`` links to, the
  model card as JSON, FHIR Device or Markdown (public, like discovery: no patient data);
- ``GET /.well-known/jwks.json``: the public key of its SMART Backend Services client
  assertions (404 when no FHIR server is registered for them);
- ``GET /healthz``.

Hooks and feedback need the EHR's JWT (``clientauth``), whose ``aud`` is the URL called
(``public_url`` and the path). Every refusal is JSON naming the field (``errors``); bodies
over ``max_body_bytes`` get 413 before they are read; CORS lets browser-based EHRs call
(preflight included), as the specification asks.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc.aio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clinalign.cdshooks import metrics
from clinalign.cdshooks.backend import Backend
from clinalign.cdshooks.catalogue import SERVICES, CdsService
from clinalign.cdshooks.clientauth import ClientAuth, EhrClient
from clinalign.cdshooks.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    TooLarge,
    TooMany,
    Upstream,
)
from clinalign.cdshooks.feedback import Ledger
from clinalign.cdshooks.fhir import FhirFetcher
from clinalign.cdshooks.modelcard import ModelCards
from clinalign.common.web import healthz

log = logging.getLogger("clinalign.cdshooks")

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Origin, Accept, Content-Location, Location, X-Requested-With",
    "Access-Control-Max-Age": "600",
}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


@dataclass
class Gateway:
    backend: Backend
    auth: ClientAuth
    ledger: Ledger
    public_url: str
    max_body_bytes: int
    max_new_tokens: int
    allowed_origins: list[str]
    fhir: FhirFetcher
    model_cards: ModelCards

    def client(self, request: Request) -> EhrClient:
        return self.auth.verify(
            request.headers.get("authorization"), self.public_url + request.url.path
        )

    async def body(self, request: Request) -> Any:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.max_body_bytes:
                raise TooLarge("body", f"is larger than {self.max_body_bytes} bytes")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("body", "is not JSON") from None


def gateway_of(request: Request) -> Gateway:
    found: Gateway = request.app.state.gateway
    return found


def service_of(request: Request) -> CdsService:
    service = SERVICES.get(request.path_params["id"])
    if service is None:
        raise NotFound("id", f"no CDS service {request.path_params['id']!r}; see /cds-services")
    return service


def cors(request: Request, response: Response, origins: list[str]) -> None:
    origin = request.headers.get("origin")
    if origin is None:
        return
    if "*" in origins:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    else:
        return
    response.headers.update(CORS_HEADERS)


class Guard(BaseHTTPMiddleware):
    """CORS and its preflight; the size limit; refusals as JSON; security headers; metrics."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        started = time.perf_counter()
        gateway = gateway_of(request)
        response: Response
        if request.method == "OPTIONS":
            response = Response(status_code=204)
        elif int(request.headers.get("content-length") or 0) > gateway.max_body_bytes:
            err = TooLarge("body", f"is larger than {gateway.max_body_bytes} bytes")
            response = JSONResponse(err.body(), err.status)
        else:
            try:
                response = await call_next(request)
            except GatewayError as err:
                headers = err.headers() if isinstance(err, TooMany) else None
                response = JSONResponse(err.body(), err.status, headers=headers)
            except grpc.aio.AioRpcError as err:  # a call no use case mapped: not the caller's
                log.warning("service call failed: %s", err.code().name)
                failed = Upstream("", "a ClinAlign service failed; retry shortly")
                response = JSONResponse(failed.body(), failed.status)
        if response.status_code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        cors(request, response, gateway.allowed_origins)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        metrics.observe(request, response.status_code, time.perf_counter() - started)
        return response


def build_app(gateway: Gateway) -> Starlette:
    from clinalign.cdshooks import routes

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/cds-services", routes.discover, methods=["GET"]),
            Route("/cds-services/{id}", routes.hook, methods=["POST"]),
            Route("/cds-services/{id}/feedback", routes.feedback, methods=["POST"]),
            Route("/model-cards/{name}/{version}", routes.model_card, methods=["GET"]),
            Route("/.well-known/jwks.json", routes.jwks, methods=["GET"]),
        ],
        middleware=[Middleware(Guard)],
    )
    app.state.gateway = gateway
    return app
