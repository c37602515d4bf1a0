"""Trainer errors. The shared hierarchy covers what the trainer raises today; job- and
gate-specific classes join it here as those features land."""

from clinalign.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

__all__ = ["FailedPrecondition", "InvalidArgument", "NotFound", "ResourceExhausted"]
