"""The exception hierarchy every service raises; each class carries its gRPC status.

Core modules raise these; one interceptor (``clinalign.common.interceptors``) turns them
into statuses. Anything else escaping a handler is a bug and becomes INTERNAL with the
request id, never the exception text (which could contain patient data).
"""

from __future__ import annotations

import grpc


class ClinAlignError(Exception):
    """Base class: a failure the caller can act on, with its status code."""

    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ClinAlignError):
    """The request is malformed. The message always names the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(ClinAlignError):
    """A referenced entity does not exist."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, kind: str, ident: str, field: str | None = None) -> None:
        where = f"{field}: " if field else ""
        super().__init__(f"{where}{kind} {ident!r} not found")
        self.field = field


class FailedPrecondition(ClinAlignError):
    """The system is not in a state that allows the operation (say, no model loaded)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ClinAlignError):
    """Overload: a queue or concurrency limit is full. Retry with backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ClinAlignError):
    """No bearer token, or one this service does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ClinAlignError):
    """The caller's role may not call this RPC."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ClinAlignError):
    """A dependency (remote backend, peer service) cannot be reached; safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ClinAlignError):
    """The caller's deadline passed before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
