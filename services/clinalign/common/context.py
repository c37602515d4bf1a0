"""Per-request context carried in ``contextvars``: request id and the calling principal."""

from __future__ import annotations

import contextvars
import uuid

from clinalign.common.auth import Principal

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)

REQUEST_ID_HEADER = "x-request-id"


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str:
    return request_id_var.get()


def current_principal() -> Principal | None:
    return principal_var.get()


def principal_shown() -> str:
    """The caller as audit entries record it: the person, and the front door acting for
    them (``u-alice via svc-console``)."""
    p = current_principal()
    return p.shown if p else "anonymous"


def principal_name() -> str:
    """The caller's pseudonymous principal name (tokens map to pseudonyms, not people), or
    ``anonymous`` outside an authenticated call."""
    p = current_principal()
    return p.name if p else "anonymous"
