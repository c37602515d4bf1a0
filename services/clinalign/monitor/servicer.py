"""gRPC surface of the monitor: each RPC converts its request (``convert``), makes one
call into the use cases (``usecases.Monitor``) and converts the result back."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import grpc.aio

from clinalign.common.auth import Role, ServiceCallers, roles
from clinalign.common.context import principal_name
from clinalign.common.protos import datetime_from
from clinalign.monitor import flags
from clinalign.monitor.convert import (
    cost_model_stats_to_proto,
    flag_from_proto,
    flag_to_proto,
    outcome_from_proto,
    output_filter_from_proto,
    output_from_proto,
    output_summary_to_proto,
    replay_case_to_proto,
    run_to_proto,
    stats_to_proto,
)
from clinalign.monitor.usecases import Monitor
from clinalign.monitor.v1 import monitor_pb2 as pb
from clinalign.monitor.v1 import monitor_pb2_grpc

_SVC = "/clinalign.monitor.v1.MonitorService/"
# A clinical lead is a clinician who also reads the safety dashboards (GetStats); an
# issuer grants `clinical-lead` beside `clinician`, a static token holds either.
_CLINICAL = (Role.CLINICIAN, Role.CLINICAL_LEAD)
ROLES: Mapping[str, frozenset[Role]] = {
    _SVC + "RecordOutputs": roles(Role.SERVICE),
    _SVC + "FlagOutput": roles(*_CLINICAL),
    # Reported by the CDS Hooks gateway as the EHR user, with the role it asserts for flags.
    _SVC + "RecordOutcome": roles(*_CLINICAL),
    _SVC + "ListFlags": roles(*_CLINICAL, Role.ML_ENGINEER),
    _SVC + "ResolveFlag": roles(*_CLINICAL),
    _SVC + "GetStats": roles(Role.CLINICAL_LEAD, Role.ML_ENGINEER, Role.SERVICE),
    _SVC + "GetLineage": roles(*_CLINICAL, Role.ML_ENGINEER),
    _SVC + "ListOutputs": roles(*_CLINICAL, Role.ML_ENGINEER),
    _SVC + "GetOutput": roles(*_CLINICAL, Role.ML_ENGINEER),
    _SVC + "EvaluateRetraining": roles(Role.ML_ENGINEER, Role.SERVICE),
    _SVC + "ListRetrainingRuns": roles(Role.ML_ENGINEER),
    _SVC + "ListReplayCases": roles(Role.SERVICE),
}

# Which ClinAlign services' own credentials may call the RPCs role service may call:
# generation reports every output; the trainer's gate replays confirmed flags.
SERVICE_CALLERS: ServiceCallers = {
    _SVC + "RecordOutputs": frozenset({"generation"}),
    _SVC + "GetStats": frozenset(),
    _SVC + "EvaluateRetraining": frozenset(),
    _SVC + "ListReplayCases": frozenset({"trainer"}),
}


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    async def RecordOutputs(
        self, request: pb.RecordOutputsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutputsResponse:
        records = [output_from_proto(o, f"outputs[{i}]") for i, o in enumerate(request.outputs)]
        recorded, duplicates = await self.monitor.record_outputs(records)
        return pb.RecordOutputsResponse(recorded=recorded, duplicates=duplicates)

    async def FlagOutput(
        self, request: pb.FlagOutputRequest, context: grpc.aio.ServicerContext
    ) -> pb.FlagOutputResponse:
        row = await self.monitor.flag_output(flag_from_proto(request), principal_name())
        return pb.FlagOutputResponse(flag=flag_to_proto(row))

    async def RecordOutcome(
        self, request: pb.RecordOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutcomeResponse:
        replayed = await self.monitor.record_outcome(outcome_from_proto(request), principal_name())
        return pb.RecordOutcomeResponse(replayed=replayed)

    async def ListFlags(
        self, request: pb.ListFlagsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListFlagsResponse:
        f = flags.Filter(
            request.status, request.category, request.model_version, request.min_severity
        )
        page = await self.monitor.list_flags(f, request.page_size, request.page_token)
        return pb.ListFlagsResponse(
            flags=[flag_to_proto(r, page.feedback.get(r.id)) for r in page.flags],
            next_page_token=page.next_page_token,
        )

    async def ResolveFlag(
        self, request: pb.ResolveFlagRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveFlagResponse:
        row, delivery = await self.monitor.resolve_flag(
            request.flag_id, request.resolution, request.reason, principal_name()
        )
        return pb.ResolveFlagResponse(flag=flag_to_proto(row, delivery))

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        end = (
            datetime_from(request.end_time, "end_time")
            if request.HasField("end_time")
            else datetime.now(UTC)
        )
        start = (
            datetime_from(request.start_time, "start_time")
            if request.HasField("start_time")
            else end - timedelta(hours=24)
        )
        stats, costs = await self.monitor.stats(request.model_version, start, end)
        bins = self.monitor.limits.psi_bins
        return pb.GetStatsResponse(
            versions=[stats_to_proto(v, bins) for v in stats],
            cost_models=[cost_model_stats_to_proto(c) for c in costs],
        )

    async def GetLineage(
        self, request: pb.GetLineageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLineageResponse:
        steps, model = await self.monitor.lineage(request.output_id)
        reply = pb.GetLineageResponse(
            steps=[
                pb.LineageStep(kind=s.kind, id=s.id, summary=s.summary, parent_id=s.parent_id)
                for s in steps
            ]
        )
        if model is not None:
            reply.model.CopyFrom(model)
        return reply

    async def ListOutputs(
        self, request: pb.ListOutputsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOutputsResponse:
        page = await self.monitor.list_outputs(
            output_filter_from_proto(request), request.page_size, request.page_token
        )
        return pb.ListOutputsResponse(
            outputs=[output_summary_to_proto(s) for s in page.outputs],
            next_page_token=page.next_page_token,
        )

    async def GetOutput(
        self, request: pb.GetOutputRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOutputResponse:
        detail = await self.monitor.get_output(request.output_id)
        return pb.GetOutputResponse(
            output=output_summary_to_proto(detail.summary),
            flags=[flag_to_proto(r, detail.feedback.get(r.id)) for r in detail.flags],
        )

    async def EvaluateRetraining(
        self, request: pb.EvaluateRetrainingRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvaluateRetrainingResponse:
        result = await self.monitor.evaluate_retraining(request.dry_run)
        reply = pb.EvaluateRetrainingResponse(triggered=result.triggered, reasons=result.reasons)
        if result.run is not None:
            reply.run.CopyFrom(run_to_proto(result.run))
        return reply

    async def ListRetrainingRuns(
        self, request: pb.ListRetrainingRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRetrainingRunsResponse:
        runs, token = await self.monitor.list_runs(request.page_size, request.page_token)
        return pb.ListRetrainingRunsResponse(
            runs=[run_to_proto(r) for r in runs], next_page_token=token
        )

    async def ListReplayCases(
        self, request: pb.ListReplayCasesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReplayCasesResponse:
        page = await self.monitor.replay_cases(
            request.min_severity, request.page_size, request.page_token
        )
        return pb.ListReplayCasesResponse(
            cases=[replay_case_to_proto(c) for c in page.cases],
            next_page_token=page.next_page_token,
            purged=page.purged,
        )
