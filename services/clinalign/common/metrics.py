"""Prometheus metrics shared by every service, and the /metrics HTTP server.

RPC metrics follow the OpenTelemetry RPC semantic conventions' names (rpc.server.duration)
with the service as a label; each service's own metrics live in its package with the
prefix ``clinalign_<service>_``. Labels never carry request content.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_DURATION = Histogram(
    "rpc_server_duration_seconds",
    "Duration of inbound RPCs, from the first request byte to the status.",
    ["service", "rpc_method", "rpc_grpc_status_code"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RPC_REQUESTS = Counter(
    "rpc_server_requests",
    "Inbound RPCs by method and final status code.",
    ["service", "rpc_method", "rpc_grpc_status_code"],
)
RPC_IN_FLIGHT = Gauge(
    "rpc_server_active_requests",
    "Inbound RPCs being handled now.",
    ["service"],
)
SERVICE_UP = Gauge(
    "clinalign_service_ready",
    "1 when the service reports SERVING on its health endpoint.",
    ["service"],
)


@dataclass
class MetricsServer:
    """A running /metrics endpoint."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(host: str, port: int) -> MetricsServer:
    server, thread = start_http_server(port, addr=host)
    return MetricsServer(server, thread)
