"""Conversions between domain types and shared protobuf messages."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from clinalign.common.errors import InvalidArgument
from clinalign.common.v1 import common_pb2

KIND_TO_PROTO = {
    "policy": common_pb2.MODEL_KIND_POLICY,
    "reward": common_pb2.MODEL_KIND_REWARD,
    "cost": common_pb2.MODEL_KIND_COST,
}
KIND_FROM_PROTO = {v: k for k, v in KIND_TO_PROTO.items()}
STAGE_TO_PROTO = {
    "registered": common_pb2.MODEL_STAGE_REGISTERED,
    "serving": common_pb2.MODEL_STAGE_SERVING,
    "retired": common_pb2.MODEL_STAGE_RETIRED,
    "rejected": common_pb2.MODEL_STAGE_REJECTED,
    "canary": common_pb2.MODEL_STAGE_CANARY,
}


def datetime_from(ts: Timestamp, field: str) -> datetime:
    """A request's timestamp as an aware UTC datetime; INVALID_ARGUMENT naming ``field``
    for one outside what a Timestamp may hold (years 1 to 9999, nanos below 10^9)."""
    try:
        return ts.ToDatetime(UTC)
    except ValueError:
        raise InvalidArgument(
            field, "is not a valid time: seconds from 0001-01-01 to 9999-12-31, nanos below 1e9"
        ) from None


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def enum_name(enum: Any, value: int, *, lower: bool = True) -> str:
    """A protobuf enum value's name without its type prefix, as logs, tables and the stores
    spell it: ``enum_name(JobState, JOB_STATE_RUNNING)`` is ``running``. The prefix is the
    enum type's name in upper snake case (buf's ENUM_VALUE_PREFIX rule), e.g. ``JOB_STATE_``.
    """
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"
    name = str(enum.Name(value)).removeprefix(prefix)
    return name.lower() if lower else name
