"""gRPC surface of the monitor: converts protobuf ↔ domain and calls the store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import grpc.aio

from clinalign.common.auth import Role, roles
from clinalign.common.db import Database
from clinalign.common.errors import InvalidArgument
from clinalign.monitor import store
from clinalign.monitor.v1 import monitor_pb2, monitor_pb2_grpc

_SVC = "/clinalign.monitor.v1.MonitorService/"
ROLES: Mapping[str, frozenset[Role]] = {
    _SVC + "RecordOutputs": roles(Role.SERVICE),
    _SVC + "FlagOutput": roles(Role.CLINICIAN),
    _SVC + "ListFlags": roles(Role.CLINICIAN, Role.ML_ENGINEER),
    _SVC + "ResolveFlag": roles(Role.CLINICIAN),
    _SVC + "GetStats": roles(Role.ML_ENGINEER, Role.SERVICE),
    _SVC + "GetLineage": roles(Role.CLINICIAN, Role.ML_ENGINEER),
    _SVC + "EvaluateRetraining": roles(Role.ML_ENGINEER, Role.SERVICE),
    _SVC + "ListRetrainingRuns": roles(Role.ML_ENGINEER),
}


def _record(i: int, out: monitor_pb2.ProductionOutput) -> store.OutputRecord:
    field = f"outputs[{i}]"
    if not out.output_id or len(out.output_id) > 64:
        raise InvalidArgument(f"{field}.output_id", "is required, at most 64 characters")
    if not out.model_version:
        raise InvalidArgument(f"{field}.model_version", "is required")
    if out.latency_s < 0:
        raise InvalidArgument(f"{field}.latency_s", "must not be negative")
    if out.completion_tokens < 0:
        raise InvalidArgument(f"{field}.completion_tokens", "must not be negative")
    created = out.create_time.ToDatetime(UTC) if out.HasField("create_time") else datetime.now(UTC)
    return store.OutputRecord(
        output_id=out.output_id,
        model_version=out.model_version,
        prompt_template_version=out.prompt_template_version,
        latency_s=out.latency_s,
        completion_tokens=out.completion_tokens,
        reward_score=out.reward_score if out.HasField("reward_score") else None,
        created_at=created,
    )


def _distribution(values: list[float]) -> monitor_pb2.Distribution:
    if not values:
        return monitor_pb2.Distribution()
    return monitor_pb2.Distribution(
        count=len(values),
        mean=sum(values) / len(values),
        p50=store.percentile(values, 50),
        p90=store.percentile(values, 90),
        p99=store.percentile(values, 99),
    )


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    """RecordOutputs and GetStats are live; flags, drift and the loop arrive with the
    monitor issue and answer UNIMPLEMENTED until then."""

    def __init__(self, db: Database, max_batch: int) -> None:
        self.db = db
        self.max_batch = max_batch

    async def RecordOutputs(
        self, request: monitor_pb2.RecordOutputsRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.RecordOutputsResponse:
        if not request.outputs:
            raise InvalidArgument("outputs", "must hold at least one output")
        if len(request.outputs) > self.max_batch:
            raise InvalidArgument(
                "outputs", f"holds {len(request.outputs)}; at most {self.max_batch} per call"
            )
        records = [_record(i, o) for i, o in enumerate(request.outputs)]
        recorded, dupes = await self.db.run_sync(lambda s: store.record_outputs(s, records))
        return monitor_pb2.RecordOutputsResponse(recorded=recorded, duplicates=dupes)

    async def GetStats(
        self, request: monitor_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.GetStatsResponse:
        end = (
            request.end_time.ToDatetime(UTC) if request.HasField("end_time") else datetime.now(UTC)
        )
        start = (
            request.start_time.ToDatetime(UTC)
            if request.HasField("start_time")
            else end - timedelta(hours=24)
        )
        if start >= end:
            raise InvalidArgument("start_time", "must be before end_time")
        stats = await self.db.run_sync(
            lambda s: store.version_stats(s, request.model_version or None, start, end)
        )
        return monitor_pb2.GetStatsResponse(
            versions=[
                monitor_pb2.VersionStats(
                    model_version=v.model_version,
                    outputs=v.outputs,
                    reward_score=_distribution(v.reward_scores),
                    latency_s=_distribution(v.latency),
                )
                for v in stats
            ]
        )
