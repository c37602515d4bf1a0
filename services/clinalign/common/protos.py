"""Conversions between domain types and shared protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from clinalign.common.v1 import common_pb2

KIND_TO_PROTO = {
    "policy": common_pb2.MODEL_KIND_POLICY,
    "reward": common_pb2.MODEL_KIND_REWARD,
}
KIND_FROM_PROTO = {v: k for k, v in KIND_TO_PROTO.items()}
STAGE_TO_PROTO = {
    "registered": common_pb2.MODEL_STAGE_REGISTERED,
    "serving": common_pb2.MODEL_STAGE_SERVING,
    "retired": common_pb2.MODEL_STAGE_RETIRED,
    "rejected": common_pb2.MODEL_STAGE_REJECTED,
}


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts
