"""What the HTTP front doors (the console, the CDS Hooks gateway) share: serving an ASGI
application with uvicorn beside /metrics, and counting requests by route template (never
a path with ids in it, never request content). Only the front doors import this module:
it needs starlette and uvicorn, which the gRPC services' images do not install."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from clinalign.common.config import CommonSettings, ServiceSettings
from clinalign.common.metrics import start_metrics_server


async def healthz(request: Request) -> Response:
    """The process answers: the probes' endpoint."""
    return Response("ok", media_type="text/plain")


def route_of(request: Request) -> str:
    """The template of the route a request matched, such as ``/outputs/{output_id:str}``."""
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "other"))
    return "unmatched"


class RouteMetrics:
    """A front door's request counter and server-time histogram (each defined in its own
    metrics module, labelled ``route``, ``method`` and, for the counter, ``status``)."""

    def __init__(self, requests: Counter, server_time: Histogram) -> None:
        self.requests = requests
        self.server_time = server_time

    def observe(self, request: Request, status: int, seconds: float) -> None:
        route = route_of(request)
        self.requests.labels(route, request.method, str(status)).inc()
        self.server_time.labels(route, request.method).observe(seconds)


def serve(
    name: str,
    build: Callable[[], Any],
    common: CommonSettings,
    settings: ServiceSettings,
    log: logging.Logger,
    startup_errors: tuple[type[Exception], ...] = (OSError, ValueError),
) -> None:
    """Builds the application (an operator's mistake in the settings exits with status 1
    and one log line), then serves it with uvicorn (HTTPS when ``tls_cert_file`` is set)
    and /metrics beside it until SIGTERM or SIGINT."""
    import uvicorn

    try:
        app = build()
    except startup_errors as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)
    # uvicorn stops gracefully on SIGTERM or SIGINT, then raises the signal again for the
    # handler it found: a quiet one here, so a clean stop exits with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    metrics = start_metrics_server(common.host, settings.metrics_port)
    log.info("%s on port %d, metrics on %d", name, settings.port, metrics.port)
    try:
        uvicorn.run(
            app,
            host=common.host,
            port=settings.port,
            ssl_certfile=str(common.tls_cert_file) if common.tls_cert_file else None,
            ssl_keyfile=str(common.tls_key_file) if common.tls_key_file else None,
            access_log=False,  # requests are counted in /metrics; paths carry ids
            log_level="warning",
            server_header=False,
        )
    finally:
        metrics.stop()
