"""The console's Prometheus metrics: requests and their server time by route template
(never a path with ids in it, never request content)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from clinalign.common.web import RouteMetrics

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

observe = RouteMetrics(REQUESTS, SERVER_TIME).observe
