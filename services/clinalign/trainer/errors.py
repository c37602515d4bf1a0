"""Trainer errors. The shared hierarchy covers most of what the trainer raises; classes
specific to jobs and the gate join it here."""

import grpc

from clinalign.common.errors import (
    ClinAlignError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)


class NotAvailableYet(ClinAlignError):
    """A job kind or executor the contract names but this release does not run yet."""

    code = grpc.StatusCode.UNIMPLEMENTED


__all__ = [
    "FailedPrecondition",
    "InvalidArgument",
    "NotAvailableYet",
    "NotFound",
    "ResourceExhausted",
]
