"""The services, called as the signed-in person.

Every call carries the console's own credential (``svc-console``, through ``Clients``) and,
in ``x-clinalign-on-behalf-of``, the person: their own token from the issuer, or the
assertion the console signs for a development sign-in. The services verify both and run
the call as the person with the person's roles, so the preference store and the monitor
attribute each label, flag and review to them (``u-alice via svc-console``), and refuse
what the person's role may not do. The console never calls with a shared or admin token.
"""

from __future__ import annotations

from typing import Any

import grpc

from clinalign.common.assertions import AssertionSigner
from clinalign.common.channels import Clients
from clinalign.common.delegation import ON_BEHALF_OF
from clinalign.console.sessions import Session

# gRPC status -> (HTTP status, what the page says); a caller's mistake is never a 500
HTTP_OF: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "That was not accepted"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "That cannot be done now"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "That was already done"),
    grpc.StatusCode.NOT_FOUND: (404, "Not found"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "Your role may not do that"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "Please sign in again"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "Too many requests; wait a moment"),
    grpc.StatusCode.UNAVAILABLE: (503, "A service is unavailable; try again shortly"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "A service is slow; try again shortly"),
}
TIMEOUT_S = 10.0


class Backend:
    """The preference, monitor and trainer stubs, and the metadata that names the person."""

    def __init__(self, clients: Clients, signer: AssertionSigner) -> None:
        self.clients = clients
        self.signer = signer

    def metadata(self, session: Session) -> tuple[tuple[str, str], ...]:
        person = session.token or self.signer.assertion(session.subject, session.roles)
        return ((ON_BEHALF_OF, person),)

    async def call(self, session: Session, stub: str, method: str, request: Any) -> Any:
        """``<stub>.<method>(request)`` as the person."""
        rpc = getattr(getattr(self.clients, stub), method)
        return await rpc(request, metadata=self.metadata(session), timeout=TIMEOUT_S)
