"""Outgoing gRPC channels: TLS when configured, bearer token and request id on every call.

The request id of the RPC being served (``contextvars``) travels to the callee, so one id
ties together the logs of every service a request touches; trace context travels through
the OpenTelemetry client instrumentation when tracing is on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from clinalign.common.config import CommonSettings
from clinalign.common.context import REQUEST_ID_HEADER, current_request_id, new_request_id


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


def channel_options(settings: CommonSettings) -> list[tuple[str, int]]:
    size = settings.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.keepalive_time_ms", settings.keepalive_time_s * 1000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


def open_channel(
    target: str,
    settings: CommonSettings,
    token: str | None,
    *,
    client_cert: tuple[Path, Path] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to a ClinAlign service, authenticated with ``token``."""
    interceptors: list[grpc.aio.ClientInterceptor] = [
        cls(token) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    ]
    options = channel_options(settings)
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


def service_token(settings: CommonSettings) -> str:
    """The token this service presents to its peers (role ``service``)."""
    from clinalign.common.auth import Role, token_for_role

    return settings.service_token or token_for_role(settings.resolved_tokens_file, Role.SERVICE)
