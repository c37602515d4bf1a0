"""The one way to reach a ClinAlign service: ``Clients``, typed stubs of the five services
on channels opened on first use, with TLS when configured, the caller's bearer token and
the request id on every call, and the message-size and keepalive settings of
``CommonSettings``. Services, the CLI, the demo and the tests all reach their peers
through it (``open_channel`` underneath is for a single channel to an explicit target).

The request id of the RPC being served (``contextvars``) travels to the callee, so one id
ties together the logs of every service a request touches; trace context travels through
the OpenTelemetry client instrumentation when tracing is on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import grpc.aio

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.context import REQUEST_ID_HEADER, current_request_id, new_request_id
from clinalign.generation.v1.generation_pb2_grpc import GenerationServiceStub
from clinalign.monitor.v1.monitor_pb2_grpc import MonitorServiceStub
from clinalign.preference.v1.preference_pb2_grpc import PreferenceServiceStub
from clinalign.reward.v1.reward_pb2_grpc import RewardServiceStub
from clinalign.trainer.v1.trainer_pb2_grpc import TrainerServiceStub

# mypy-protobuf's async stub types exist in the .pyi files only (and grpc ships no types,
# so its overloads cannot pick them): the properties cast to them.
if TYPE_CHECKING:
    from clinalign.generation.v1.generation_pb2_grpc import GenerationServiceAsyncStub
    from clinalign.monitor.v1.monitor_pb2_grpc import MonitorServiceAsyncStub
    from clinalign.preference.v1.preference_pb2_grpc import PreferenceServiceAsyncStub
    from clinalign.reward.v1.reward_pb2_grpc import RewardServiceAsyncStub
    from clinalign.trainer.v1.trainer_pb2_grpc import TrainerServiceAsyncStub


def _metadata(token: str | None, existing: Any) -> list[tuple[str, str]]:
    md = list(existing or ())
    if token and not any(k == "authorization" for k, _ in md):
        md.append(("authorization", f"Bearer {token}"))
    if not any(k == REQUEST_ID_HEADER for k, _ in md):
        rid = current_request_id()
        md.append((REQUEST_ID_HEADER, rid if rid != "-" else new_request_id()))
    return md


class _AuthMetadata:
    """Adds the bearer token and request id to a call's metadata."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=grpc.aio.Metadata(*_metadata(self._token, details.metadata)),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


# grpc.aio files an interceptor under the first call type it implements only, so each
# call type gets its own class.
class _UnaryUnary(_AuthMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_AuthMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_AuthMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, it: Any
    ) -> Any:
        return await continuation(self._details(details), it)


class _StreamStream(_AuthMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, it: Any
    ) -> Any:
        return await continuation(self._details(details), it)


def channel_options(settings: CommonSettings) -> list[tuple[str, int | str]]:
    size = settings.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.keepalive_time_ms", settings.keepalive_time_s * 1000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # A target that resolves to several pods (a headless Service) gets every call
        # balanced over all of them; a single address is unaffected.
        ("grpc.lb_policy_name", "round_robin"),
    ]


# How often a client looks whether its certificate files were renewed.
TLS_CHECK_INTERVAL_S = 1.0

# gRPC's own retries (gRFC A6) for calls a server refused before running them: it answers
# RESOURCE_EXHAUSTED with a grpc-retry-pushback-ms trailer when a principal is over its rate
# (clinalign.common.quotas), and the channel waits that long. Without the trailer the backoff
# applies; the server's handler never ran, so a retry cannot do anything twice.
_RATE_LIMIT_RETRY = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
                },
            }
        ]
    }
)


def open_channel(
    target: str,
    settings: CommonSettings,
    token: str | None,
    *,
    client_cert: tuple[Path, Path] | None = None,
    server_name: str = "",
    retry_refused: bool = False,
) -> grpc.aio.Channel:
    """An asyncio channel to a ClinAlign service, authenticated with ``token``.
    ``server_name``: the name its certificate carries, when ``target`` is an address (one
    replica of a Service). ``retry_refused``: retry RESOURCE_EXHAUSTED, honouring the
    server's pushback (``_RATE_LIMIT_RETRY``)."""
    interceptors: list[grpc.aio.ClientInterceptor] = [
        cls(token) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    ]
    options = channel_options(settings)
    if retry_refused:
        options += [("grpc.enable_retries", 1), ("grpc.service_config", _RATE_LIMIT_RETRY)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if settings.tls_ca_file is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    cert_chain = key = None
    if client_cert is not None:
        cert_chain, key = client_cert[0].read_bytes(), client_cert[1].read_bytes()
    elif settings.tls_cert_file and settings.tls_key_file:
        # A service presents its own certificate when the peer requires mTLS.
        cert_chain, key = settings.tls_cert_file.read_bytes(), settings.tls_key_file.read_bytes()
    creds = grpc.ssl_channel_credentials(
        root_certificates=settings.tls_ca_file.read_bytes(),
        private_key=key,
        certificate_chain=cert_chain,
    )
    return grpc.aio.secure_channel(target, creds, options=options, interceptors=interceptors)


def service_token(settings: CommonSettings, service: str | None = None) -> str:
    """The token this service presents to its peers: ``CLINALIGN_SERVICE_TOKEN`` (each pod
    holds only its own), else its own ``svc-<name>`` entry in the tokens file."""
    from clinalign.common.auth import token_for_role, token_for_service

    if settings.service_token:
        return settings.service_token
    if service is not None:
        return token_for_service(settings.resolved_tokens_file, service)
    return token_for_role(settings.resolved_tokens_file, Role.SERVICE)


class Clients:
    """Typed async stubs of the five services, each on a channel to the service's configured
    target (``CLINALIGN_<SERVICE>_TARGET``) opened on first use, inside the event loop.

    The bearer token is ``token``; else the local token of ``role`` (the CLI and the demo
    act as a person's role); else the credential of ``service`` (``service_token``). The
    target is read on every use, so a peer whose address changed gets a fresh channel.
    ``async with Clients(...)`` closes the channels on exit.
    """

    def __init__(
        self,
        settings: CommonSettings,
        *,
        token: str | None = None,
        role: Role | None = None,
        service: str | None = None,
    ) -> None:
        self.settings = settings
        self._token = token
        self._role = role
        self._service = service
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tls_stamp = self._tls_files_stamp()
        self._tls_checked = time.monotonic()
        self._retired: list[grpc.aio.Channel] = []

    def token(self) -> str:
        if self._token is None:
            if self._role is None:
                self._token = service_token(self.settings, self._service)
            else:
                from clinalign.common.auth import token_for_role

                self._token = token_for_role(self.settings.resolved_tokens_file, self._role)
        return self._token

    def _tls_files_stamp(self) -> tuple[int, ...]:
        files = (self.settings.tls_ca_file, self.settings.tls_cert_file, self.settings.tls_key_file)
        try:
            return tuple(f.stat().st_mtime_ns for f in files if f is not None)
        except OSError:
            return ()  # mid-swap: keep the channels until the files are whole again

    def _renew_if_certificates_changed(self) -> None:
        """Renewed certificate files (cert-manager, an updated Secret) take effect without a
        restart: the channels are opened again with them; the old ones finish what they
        carry and are closed with the client. Every stub access comes here: the files are
        looked at once a second at most."""
        now = time.monotonic()
        if now - self._tls_checked < TLS_CHECK_INTERVAL_S:
            return
        self._tls_checked = now
        stamp = self._tls_files_stamp()
        if stamp and stamp != self._tls_stamp:
            self._tls_stamp = stamp
            self._retired += self._channels.values()
            self._channels = {}

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel to ``service`` (a name in ``CommonSettings.target``)."""
        if self.settings.tls_ca_file is not None:
            self._renew_if_certificates_changed()
        target = self.settings.target(service)
        if target not in self._channels:
            self._channels[target] = open_channel(
                target, self.settings, self.token(), retry_refused=True
            )
        return self._channels[target]

    @property
    def generation(self) -> GenerationServiceAsyncStub:
        return cast("GenerationServiceAsyncStub", GenerationServiceStub(self.channel("generation")))

    @property
    def reward(self) -> RewardServiceAsyncStub:
        return cast("RewardServiceAsyncStub", RewardServiceStub(self.channel("reward")))

    @property
    def preference(self) -> PreferenceServiceAsyncStub:
        return cast("PreferenceServiceAsyncStub", PreferenceServiceStub(self.channel("preference")))

    @property
    def trainer(self) -> TrainerServiceAsyncStub:
        return cast("TrainerServiceAsyncStub", TrainerServiceStub(self.channel("trainer")))

    @property
    def monitor(self) -> MonitorServiceAsyncStub:
        return cast("MonitorServiceAsyncStub", MonitorServiceStub(self.channel("monitor")))

    async def close(self) -> None:
        channels, self._channels = [*self._channels.values(), *self._retired], {}
        self._retired = []
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
