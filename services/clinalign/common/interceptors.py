"""The server interceptor every service runs: authentication and the role check before
the request is deserialized, then request id, exception → status mapping and RPC
metrics, for every RPC but health and reflection. Health's Watch streams, which anyone
may open, are capped per server.
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
from google.protobuf.message import DecodeError

from clinalign.common.auth import (
    PUBLIC_METHODS,
    Authenticator,
    Principal,
    Role,
    ServiceCallers,
    authorize,
    looks_like_jwt,
)
from clinalign.common.context import (
    REQUEST_ID_HEADER,
    new_request_id,
    principal_var,
    request_id_var,
)
from clinalign.common.delegation import ON_BEHALF_OF, Delegation
from clinalign.common.errors import ClinAlignError, InvalidArgument, PermissionDenied
from clinalign.common.metrics import RPC_DURATION, RPC_IN_FLIGHT, RPC_REQUESTS
from clinalign.common.quotas import PUSHBACK_TRAILER, PrincipalQuotas, RateLimited

log = logging.getLogger("clinalign.rpc")

Behavior = Callable[..., Any]

HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
# Unauthenticated Health/Watch streams one server holds open at once; each takes one of
# the server's concurrent-RPC slots for as long as the watcher likes.
MAX_HEALTH_WATCHES = 32


class _Call:
    """Book-keeping for one RPC: sets context, maps errors, records metrics."""

    def __init__(
        self,
        interceptor: ServerInterceptor,
        method: str,
        principal: Principal | None,
        refusal: ClinAlignError | None,
    ) -> None:
        self.interceptor = interceptor
        self.method = method
        self.principal = principal
        self.refusal = refusal
        self.short_method = method.rsplit("/", 1)[-1]
        self.code = grpc.StatusCode.OK
        self.start = 0.0
        self._release: Callable[[], None] | None = None
        self._rid_token: Token[str] | None = None
        self._principal_token: Token[Principal | None] | None = None

    def enter(self, context: grpc.aio.ServicerContext) -> None:
        self.start = time.perf_counter()
        RPC_IN_FLIGHT.labels(self.interceptor.service).inc()
        metadata = dict(context.invocation_metadata() or ())
        rid = str(metadata.get(REQUEST_ID_HEADER) or new_request_id())[:64]
        self._rid_token = request_id_var.set(rid)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        if self.refusal is not None:
            raise self.refusal
        self._principal_token = principal_var.set(self.principal)
        if self.principal is not None and self.interceptor.quotas is not None:
            try:
                self._release = self.interceptor.quotas.acquire(self.principal)
            except RateLimited as exc:
                context.set_trailing_metadata(
                    ((REQUEST_ID_HEADER, rid), (PUSHBACK_TRAILER, exc.pushback_ms))
                )
                raise

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
        if self._release is not None:
            self._release()
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
        authenticator: Authenticator,
        role_table: Mapping[str, frozenset[Role]],
        quotas: PrincipalQuotas | None = None,
        service_callers: ServiceCallers | None = None,
        delegation: Delegation | None = None,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.role_table = role_table
        self.quotas = quotas
        self.service_callers = service_callers
        self.delegation = delegation
        self.health_watches = 0

    async def authenticate(
        self, method: str, authorization: str | None, on_behalf_of: str | None = None
    ) -> Principal:
        if authorization is not None and looks_like_jwt(authorization):
            # A JWT: its signature check (and, rarely, a fetch of the issuer's keys) runs
            # off the event loop.
            principal = await asyncio.to_thread(self.authenticator.authenticate, authorization)
        else:
            principal = self.authenticator.authenticate(authorization)
        if on_behalf_of is not None:
            if self.delegation is None:
                raise PermissionDenied(f"{ON_BEHALF_OF} is not accepted by this server")
            principal = await asyncio.to_thread(self.delegation.person, principal, on_behalf_of)
        authorize(principal, method, self.role_table, self.service_callers)
        return principal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is not None and method == HEALTH_WATCH:
            return _capped_watch(handler, self)
        if handler is None or method in PUBLIC_METHODS:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        principal: Principal | None = None
        refusal: ClinAlignError | None = None
        try:
            principal = await self.authenticate(
                method, metadata.get("authorization"), metadata.get(ON_BEHALF_OF)
            )
        except ClinAlignError as exc:
            refusal = exc
        return _wrap(handler, self, method, principal, refusal)


def _unread(_: bytes) -> None:
    """The deserializer of a refused call: its body is never parsed."""
    return None


class _Malformed:
    """Stands in for a request body that does not decode as the RPC's message; the call
    answers INVALID_ARGUMENT (grpc itself would answer UNKNOWN)."""


_MALFORMED = _Malformed()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _MALFORMED

    return parse


def _check_decoded(request: Any, method: str) -> None:
    if request is _MALFORMED:
        raise InvalidArgument("request", f"is not a valid protobuf message for {method}")


def _decoded(request: Any, method: str) -> Any:
    """The request as the handler gets it: a stream whose messages are checked as they
    come, or the one message, checked now."""
    if isinstance(request, AsyncIterator):
        return _checked_stream(request, method)
    _check_decoded(request, method)
    return request


async def _checked_stream(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    async for request in requests:
        _check_decoded(request, method)
        yield request


def _capped_watch(handler: grpc.RpcMethodHandler, icpt: ServerInterceptor) -> Any:
    behavior = handler.unary_stream

    async def watch(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if icpt.health_watches >= MAX_HEALTH_WATCHES:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {MAX_HEALTH_WATCHES} Health/Watch streams are open; use Check",
            )
        icpt.health_watches += 1
        try:
            async for response in behavior(request, context):
                yield response
        finally:
            icpt.health_watches -= 1

    return grpc.unary_stream_rpc_method_handler(
        watch,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _wrap(
    handler: grpc.RpcMethodHandler,
    icpt: ServerInterceptor,
    method: str,
    principal: Principal | None,
    refusal: ClinAlignError | None,
) -> Any:
    ser = {
        "request_deserializer": _unread if refusal else _lenient(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    call = (icpt, method, principal, refusal)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, *call), **ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, *call), **ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, *call), **ser)
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, *call), **ser)


def _unary(
    behavior: Behavior,
    icpt: ServerInterceptor,
    method: str,
    principal: Principal | None,
    refusal: ClinAlignError | None,
) -> Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _Call(icpt, method, principal, refusal)
        try:
            call.enter(context)
            return await behavior(_decoded(request, method), context)
        except BaseException as exc:
            await call.fail(context, exc)
        finally:
            call.exit()

    return wrapper


def _streaming(
    behavior: Behavior,
    icpt: ServerInterceptor,
    method: str,
    principal: Principal | None,
    refusal: ClinAlignError | None,
) -> Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = _Call(icpt, method, principal, refusal)
        try:
            call.enter(context)
            async for response in behavior(_decoded(request, method), context):
                yield response
        except BaseException as exc:
            if isinstance(exc, GeneratorExit):
                call.code = grpc.StatusCode.CANCELLED
                raise
            await call.fail(context, exc)
        finally:
            call.exit()

    return wrapper
