"""Server start-up shared by every service.

``create_server`` builds a ``grpc.aio`` server with health, reflection, the ClinAlign
interceptor, message-size and keepalive limits, and TLS or mTLS when configured; tests call
it with port 0. ``run_service`` is each service's ``main``: logs, tracing, /metrics, the
service's own ``start()``, SERVING, and on SIGTERM or SIGINT a graceful shutdown
(NOT_SERVING first so load balancers drain, then ``server.stop(grace)``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from clinalign.common.auth import Authenticator, Role, ServiceCallers
from clinalign.common.channels import channel_options
from clinalign.common.config import CommonSettings, ServiceSettings
from clinalign.common.db import Database
from clinalign.common.delegation import delegation_from
from clinalign.common.errors import ClinAlignError, FailedPrecondition
from clinalign.common.interceptors import ServerInterceptor
from clinalign.common.logs import configure_logging
from clinalign.common.metrics import SERVICE_UP, MetricsServer, start_metrics_server
from clinalign.common.oidc import authenticator_from
from clinalign.common.quotas import PrincipalQuotas
from clinalign.common.tracing import configure_tracing

log = logging.getLogger("clinalign.server")

MAX_CONNECTION_AGE_S = 300
MAX_CONNECTION_AGE_GRACE_S = 1800

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServiceApp(Protocol):
    """What a service provides to the shared start-up code."""

    name: str  # "generation": directory, metric label, log field
    full_name: str  # "clinalign.generation.v1.GenerationService": health and reflection
    roles: Mapping[str, frozenset[Role]]  # "/pkg.Service/Method" -> roles admitted
    service_callers: ServiceCallers  # "/pkg.Service/Method" -> ClinAlign services admitted

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the servicer(s) to the server."""

    async def start(self, readiness: Readiness) -> None:
        """Opens databases and loads models, then reports readiness. The process turns
        SERVING (health service "") when this returns; the service's own health entry is
        whatever the app last set, so a reward service without a model stays NOT_SERVING
        for its service name while its process is up."""

    async def stop(self) -> None:
        """Releases what start() acquired, after the server has stopped."""


class Readiness:
    """The service's own health entry (its full name), set by the app as it gains or loses
    what it needs to answer: a database, a loaded model."""

    def __init__(self, health: health_aio.HealthServicer, full_name: str, name: str) -> None:
        self._health = health
        self._full_name = full_name
        self._name = name
        self.ready = False
        self.reason = "starting"

    async def set(self, ready: bool, reason: str = "") -> None:
        self.ready, self.reason = ready, reason
        await self._health.set(self._full_name, SERVING if ready else NOT_SERVING)
        SERVICE_UP.labels(self._name).set(1 if ready else 0)
        log.info("readiness", extra={"fields": {"ready": ready, "reason": reason}})


@dataclass
class RunningServer:
    """A started server and the handles needed to drive and stop it."""

    app: ServiceApp
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    readiness: Readiness

    async def start_app(self) -> None:
        """Runs the app's start-up, then reports the process SERVING."""
        await self.app.start(self.readiness)
        await self.health.set("", SERVING)

    async def stop(self, grace: float | None) -> None:
        await self.health.enter_graceful_shutdown()
        SERVICE_UP.labels(self.app.name).set(0)
        await self.server.stop(grace)
        await self.app.stop()


class _ReloadingCertificates:
    """The server's certificate files as they are now: on each new TLS handshake grpc asks
    (``fetch``) and gets a new configuration when any file changed since, so a renewed
    certificate (cert-manager, an updated Secret) serves without a restart. Connections
    already open keep the certificate they began with."""

    def __init__(self, common: CommonSettings) -> None:
        assert common.tls_cert_file is not None and common.tls_key_file is not None
        self.cert, self.key, self.ca = (
            common.tls_cert_file,
            common.tls_key_file,
            common.tls_client_ca_file,
        )
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[int, ...]:
        return tuple(p.stat().st_mtime_ns for p in (self.cert, self.key, self.ca) if p)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        pair = (self.key.read_bytes(), self.cert.read_bytes())
        return grpc.ssl_server_certificate_configuration(
            [pair], root_certificates=self.ca.read_bytes() if self.ca else None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._stamp()
            if stamp == self.stamp:
                return None
            configuration = self.configuration()
        except (OSError, ValueError):
            return None  # half-written files: keep serving the last good ones
        self.stamp = stamp
        log.info("TLS certificate files changed; new handshakes use them")
        return configuration


def _server_credentials(common: CommonSettings) -> grpc.ServerCredentials | None:
    if not common.tls_enabled:
        return None
    files = _ReloadingCertificates(common)
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(),
        files.fetch,
        require_client_authentication=common.tls_client_ca_file is not None,
    )


async def create_server(
    app: ServiceApp,
    common: CommonSettings,
    settings: ServiceSettings,
    authenticator: Authenticator,
) -> RunningServer:
    """Builds, binds and starts the server (NOT_SERVING); returns it with its bound port."""
    server = grpc.aio.server(
        interceptors=[
            ServerInterceptor(
                app.name,
                authenticator,
                app.roles,
                PrincipalQuotas(common.rate_limits),
                app.service_callers,
                delegation_from(common, authenticator),
            )
        ],
        options=[
            *channel_options(common),
            ("grpc.keepalive_permit_without_calls", 1),
            # A second process on the same port must fail to start, not share the traffic.
            ("grpc.so_reuseport", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            # Clients reconnect every few minutes and so resolve their target again: pods
            # the autoscaler added get calls. Calls in flight (a gate run, a watch) may
            # continue for the grace period.
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_S * 1000),
            ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_S * 1000),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    app.register(server)
    reflection.enable_server_reflection(
        (
            app.full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{common.host}:{settings.port}"
    creds = _server_credentials(common)
    try:
        port = (
            server.add_secure_port(address, creds)
            if creds is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError as exc:
        raise FailedPrecondition(
            f"cannot listen on {address}: the port is in use or not allowed"
        ) from exc
    await server.start()
    await health.set("", NOT_SERVING)
    await health.set(app.full_name, NOT_SERVING)
    return RunningServer(app, server, port, health, Readiness(health, app.full_name, app.name))


async def serve(
    app: ServiceApp,
    common: CommonSettings,
    settings: ServiceSettings,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Runs one service until SIGTERM/SIGINT, then shuts it down gracefully."""
    configure_logging(app.name, common.log_level)
    configure_tracing(app.name, common)
    authenticator = authenticator_from(common)
    metrics: MetricsServer = start_metrics_server(common.host, settings.metrics_port)
    running = await create_server(app, common, settings, authenticator)
    log.info(
        "listening",
        extra={"fields": {"grpc_port": running.port, "metrics_port": metrics.port}},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await running.start_app()
        log.info("serving")
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down", extra={"fields": {"grace_s": common.grace_period_s}})
    finally:
        await running.stop(common.grace_period_s)
        metrics.stop()
        log.info("stopped")


S = TypeVar("S", bound=ServiceSettings)


def run_main(build: Callable[[CommonSettings, S], ServiceApp], settings_type: type[S]) -> None:
    """The body of every ``python -m clinalign.<service>``: parse settings once, serve.
    A start-up failure the operator can fix (no model, no tokens file) exits with status 1
    and one log line saying what to do, not a traceback."""
    common = CommonSettings()
    settings = settings_type()
    try:
        asyncio.run(serve(build(common, settings), common, settings))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return
    except (ClinAlignError, FileNotFoundError) as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)


class DatabaseApp:
    """Base for services whose readiness is their database: open it, create the schema,
    report SERVING; dispose of it on stop. Subclasses set ``name``, ``full_name``,
    ``roles`` and ``register``."""

    name: str
    full_name: str
    roles: Mapping[str, frozenset[Role]]
    service_callers: ServiceCallers

    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, server: grpc.aio.Server) -> None:
        raise NotImplementedError

    async def start(self, readiness: Readiness) -> None:
        await asyncio.to_thread(self.db.create_schema)
        await readiness.set(True)

    async def stop(self) -> None:
        self.db.dispose()
