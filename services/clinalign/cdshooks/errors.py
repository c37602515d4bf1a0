"""The gateway's refusals: an HTTP status, the request field at fault (a JSON path such as
``context.patientId``) and a message that says how to fix it. ``app`` answers each as
``{"error": {"status", "field", "message"}}``."""

from __future__ import annotations

import math


class GatewayError(Exception):
    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def body(self) -> dict[str, object]:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401


class Forbidden(GatewayError):
    status = 403


class NotFound(GatewayError):
    status = 404


class TooLarge(GatewayError):
    status = 413


class TooMany(GatewayError):
    """Over a ClinAlign service's capacity or the EHR user's rate: answered with a
    ``Retry-After`` of ``retry_after_s`` (rounded up to whole seconds)."""

    status = 429

    def __init__(self, field: str, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(field, message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class BadGateway(GatewayError):
    """The EHR's FHIR server failed or answered something that is not what was asked."""

    status = 502


class GatewayTimeout(GatewayError):
    """The EHR's FHIR server did not answer in time."""

    status = 504


class Upstream(GatewayError):
    """A ClinAlign service failed or is unavailable: not the caller's fault."""

    status = 503
