"""The server interceptor every service runs: request id, authentication, role check,
exception → status mapping and RPC metrics, in that order, for every RPC but health and
reflection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import Token
from typing import Any

import grpc
import grpc.aio

from clinalign.common.auth import PUBLIC_METHODS, Principal, Role, TokenAuthenticator
from clinalign.common.context import (
    REQUEST_ID_HEADER,
    new_request_id,
    principal_var,
    request_id_var,
)
from clinalign.common.errors import ClinAlignError
from clinalign.common.metrics import RPC_DURATION, RPC_IN_FLIGHT, RPC_REQUESTS

log = logging.getLogger("clinalign.rpc")

Behavior = Callable[..., Any]


class _Call:
    """Book-keeping for one RPC: sets context, maps errors, records metrics."""

    def __init__(self, interceptor: ServerInterceptor, method: str) -> None:
        self.interceptor = interceptor
        self.method = method
        self.short_method = method.rsplit("/", 1)[-1]
        self.code = grpc.StatusCode.OK
        self.start = 0.0
        self._rid_token: Token[str] | None = None
        self._principal_token: Token[Principal | None] | None = None

    def enter(self, context: grpc.aio.ServicerContext) -> None:
        self.start = time.perf_counter()
        RPC_IN_FLIGHT.labels(self.interceptor.service).inc()
        metadata = dict(context.invocation_metadata() or ())
        rid = str(metadata.get(REQUEST_ID_HEADER) or new_request_id())[:64]
        self._rid_token = request_id_var.set(rid)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        principal = self.interceptor.authenticate(self.method, metadata.get("authorization"))
        self._principal_token = principal_var.set(principal)

    async def fail(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        """Turns an exception into a status; re-raises what must propagate."""
        if isinstance(exc, grpc.aio.AbortError):
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
            raise exc
        if isinstance(exc, ClinAlignError):
            self.code = exc.code
            await context.abort(exc.code, exc.message)
        if isinstance(exc, NotImplementedError):
            # The generated base servicer raises this for RPCs a later release fills in.
            self.code = grpc.StatusCode.UNIMPLEMENTED
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"{self.method} is not implemented in this release"
            )
        # A bug, not a caller's mistake. Log its type only: messages may hold request text.
        self.code = grpc.StatusCode.INTERNAL
        log.error(
            "unhandled exception in %s",
            self.method,
            exc_info=(type(exc), exc, None),
            extra={"fields": {"rpc_method": self.short_method}},
        )
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error; request id {request_id_var.get()}"
        )

    def exit(self) -> None:
        service = self.interceptor.service
        labels = (service, self.short_method, self.code.name)
        RPC_DURATION.labels(*labels).observe(time.perf_counter() - self.start)
        RPC_REQUESTS.labels(*labels).inc()
        RPC_IN_FLIGHT.labels(service).dec()
        if self._principal_token is not None:
            principal_var.reset(self._principal_token)
        if self._rid_token is not None:
            request_id_var.reset(self._rid_token)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        service: str,
        authenticator: TokenAuthenticator,
        role_table: Mapping[str, frozenset[Role]],
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.role_table = role_table

    def authenticate(self, method: str, authorization: str | None) -> Principal:
        principal = self.authenticator.authenticate(authorization)
        self.authenticator.authorize(principal, method, self.role_table)
        return principal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in PUBLIC_METHODS:
            return handler
        return _wrap(handler, self, method)


def _wrap(handler: grpc.RpcMethodHandler, icpt: ServerInterceptor, method: str) -> Any:
    ser = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, icpt, method), **ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _unary(handler.stream_unary, icpt, method), **ser
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, icpt, method), **ser
        )
    return grpc.stream_stream_rpc_method_handler(
        _streaming(handler.stream_stream, icpt, method), **ser
    )


def _unary(behavior: Behavior, icpt: ServerInterceptor, method: str) -> Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _Call(icpt, method)
        try:
            call.enter(context)
            return await behavior(request, context)
        except BaseException as exc:
            await call.fail(context, exc)
        finally:
            call.exit()

    return wrapper


def _streaming(behavior: Behavior, icpt: ServerInterceptor, method: str) -> Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = _Call(icpt, method)
        try:
            call.enter(context)
            async for response in behavior(request, context):
                yield response
        except BaseException as exc:
            if isinstance(exc, GeneratorExit):
                call.code = grpc.StatusCode.CANCELLED
                raise
            await call.fail(context, exc)
        finally:
            call.exit()

    return wrapper
