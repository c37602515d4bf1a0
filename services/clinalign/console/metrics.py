"""The console's Prometheus metrics: requests and their server time by route template
(never a path with ids in it, never request content)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.routing import Match

REQUESTS = Counter(
    "clinalign_console_requests",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
SERVER_TIME = Histogram(
    "clinalign_console_request_duration_seconds",
    "Server time of HTTP requests by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10),
)


def route_of(request: Request) -> str:
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "other"))
    return "unmatched"


def observe(request: Request, status: int, seconds: float) -> None:
    route = route_of(request)
    REQUESTS.labels(route, request.method, str(status)).inc()
    SERVER_TIME.labels(route, request.method).observe(seconds)
