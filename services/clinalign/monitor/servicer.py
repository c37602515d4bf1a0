"""gRPC surface of the monitor: validate → domain → store → protobuf.

The closed loop lives in transport-free modules: ``feedback`` (confirmed flags to the
preference store), ``retraining`` (EvaluateRetraining, ListRetrainingRuns) and
``lineage`` (GetLineage); the methods here only validate and convert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc.aio
from sqlalchemy.orm import Session

from clinalign.common.auth import Role, roles
from clinalign.common.channels import Clients
from clinalign.common.context import principal_name
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.pagination import next_token, page_bounds
from clinalign.common.protos import timestamp
from clinalign.common.v1 import common_pb2
from clinalign.monitor import drift, feedback, flags, lineage, metrics, retraining, store
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.v1 import monitor_pb2 as pb
from clinalign.monitor.v1 import monitor_pb2_grpc

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

_CATEGORY_PREFIX = "ERROR_CATEGORY_"
_SEVERITY_PREFIX = "SEVERITY_"


def category_name(value: int) -> str:
    """``ERROR_CATEGORY_FACTUAL_ERROR`` → ``factual_error``, the preference store's names."""
    return (
        common_pb2.ErrorCategory.Name(common_pb2.ErrorCategory.ValueType(value))
        .removeprefix(_CATEGORY_PREFIX)
        .lower()
    )


def severity_name(value: int) -> str:
    return pb.Severity.Name(pb.Severity.ValueType(value)).removeprefix(_SEVERITY_PREFIX).lower()


@dataclass(frozen=True)
class Limits:
    """The request limits (``MonitorSettings``, where each is documented and has its
    default)."""

    max_batch: int
    max_text_chars: int
    max_comment_chars: int
    baseline_outputs: int
    psi_bins: int

    @classmethod
    def from_settings(cls, settings: MonitorSettings) -> Limits:
        return cls(
            max_batch=settings.max_batch,
            max_text_chars=settings.max_text_chars,
            max_comment_chars=settings.max_comment_chars,
            baseline_outputs=settings.baseline_outputs,
            psi_bins=settings.psi_bins,
        )


def _record(i: int, out: pb.ProductionOutput, limits: Limits) -> store.OutputRecord:
    field = f"outputs[{i}]"
    if not out.output_id or len(out.output_id) > 64:
        raise InvalidArgument(f"{field}.output_id", "is required, at most 64 characters")
    if not out.model_version or len(out.model_version) > 64:
        raise InvalidArgument(f"{field}.model_version", "is required, at most 64 characters")
    if len(out.prompt_template_version) > 64:
        raise InvalidArgument(f"{field}.prompt_template_version", "is at most 64 characters")
    for name in ("prompt", "text"):
        if len(getattr(out, name)) > limits.max_text_chars:
            raise InvalidArgument(
                f"{field}.{name}", f"is longer than {limits.max_text_chars} characters"
            )
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
        prompt=out.prompt,
        text=out.text,
    )


def _new_flag(req: pb.FlagOutputRequest, limits: Limits) -> flags.NewFlag:
    if not req.output_id:
        raise InvalidArgument("output_id", "is required")
    if req.category == common_pb2.ERROR_CATEGORY_UNSPECIFIED:
        raise InvalidArgument("category", "is required: one of the ErrorCategory values")
    if req.category not in common_pb2.ErrorCategory.values():
        raise InvalidArgument("category", f"{req.category} is not an ErrorCategory value")
    if req.severity == pb.SEVERITY_UNSPECIFIED:
        raise InvalidArgument("severity", "is required: SEVERITY_LOW to SEVERITY_CRITICAL")
    if req.severity not in pb.Severity.values():
        raise InvalidArgument("severity", f"{req.severity} is not a Severity value")
    if len(req.comment) > limits.max_comment_chars:
        raise InvalidArgument("comment", f"is longer than {limits.max_comment_chars} characters")
    if len(req.corrected_text) > limits.max_text_chars:
        raise InvalidArgument(
            "corrected_text", f"is longer than {limits.max_text_chars} characters"
        )
    return flags.NewFlag(req.output_id, req.category, req.severity, req.comment, req.corrected_text)


def flag_to_proto(row: store.FlagRow, fb: feedback.View | None = None) -> pb.Flag:
    flag = pb.Flag(
        id=row.id,
        output_id=row.output_id,
        category=row.category,  # type: ignore[arg-type]
        severity=row.severity,  # type: ignore[arg-type]
        comment=row.comment,
        corrected_text=row.corrected_text,
        status=row.status,  # type: ignore[arg-type]
        flagged_by=row.flagged_by,
        resolved_by=row.resolved_by,
        resolution_reason=row.resolution_reason,
        model_version=row.model_version,
        create_time=timestamp(store.utc(row.created_at)),
    )
    if row.resolved_at is not None:
        flag.resolve_time.CopyFrom(timestamp(store.utc(row.resolved_at)))
    if fb is not None:
        flag.feedback_state = fb.state
        flag.feedback_reason = fb.reason
        flag.feedback_refs.extend(fb.refs)
    return flag


def _distribution(values: list[float]) -> pb.Distribution:
    s = drift.summarise(values)
    if s is None:
        return pb.Distribution()
    return pb.Distribution(count=s.count, mean=s.mean, p50=s.p50, p90=s.p90, p99=s.p99)


def stats_to_proto(v: store.WindowStats, bins: int) -> pb.VersionStats:
    out = pb.VersionStats(
        model_version=v.model_version,
        outputs=v.outputs,
        flag_rate=v.flag_rate,
        confirmed_flag_rate_by_category={
            category_name(c): n / v.outputs for c, n in sorted(v.confirmed_by_category.items())
        },
        reward_score=_distribution(v.reward_scores),
        latency_s=_distribution(v.latency),
    )
    psi, ks = v.drift(bins)
    if psi is not None and ks is not None:
        out.reward_psi, out.reward_ks = psi, ks
    if v.baseline_flag_rate is not None:
        out.baseline_flag_rate = v.baseline_flag_rate
    return out


def run_to_proto(run: retraining.RunView) -> pb.RetrainingRun:
    return pb.RetrainingRun(
        id=run.id,
        trigger=run.trigger,
        state=run.state,  # type: ignore[arg-type]
        steps=[
            pb.RunStep(name=s.name, ref=s.ref, outcome=s.outcome, time=timestamp(s.at))
            for s in run.steps
        ],
        promoted_version=run.promoted_version,
        create_time=timestamp(run.created_at),
        reason=run.reason,
    )


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(
        self,
        db: Database,
        redact: store.Redactor,
        limits: Limits,
        loop: retraining.Retraining | None = None,
        peers: Clients | None = None,
    ) -> None:
        self.db = db
        self.redact = redact
        self.limits = limits
        self.loop = loop
        self.peers = peers

    async def RecordOutputs(
        self, request: pb.RecordOutputsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutputsResponse:
        if not request.outputs:
            raise InvalidArgument("outputs", "must hold at least one output")
        if len(request.outputs) > self.limits.max_batch:
            raise InvalidArgument(
                "outputs",
                f"holds {len(request.outputs)}; at most {self.limits.max_batch} per call",
            )
        records = [_record(i, o, self.limits) for i, o in enumerate(request.outputs)]
        n = self.limits.baseline_outputs
        # A race to freeze one baseline (PostgreSQL) rolls the batch back; run_write's
        # retry then records it whole.
        recorded, dupes = await self.db.run_write(
            lambda s: store.record_outputs(s, records, self.redact, n)
        )
        for version, count in recorded.items():
            metrics.OUTPUTS.labels(version).inc(count)
        return pb.RecordOutputsResponse(recorded=sum(recorded.values()), duplicates=dupes)

    async def FlagOutput(
        self, request: pb.FlagOutputRequest, context: grpc.aio.ServicerContext
    ) -> pb.FlagOutputResponse:
        new = _new_flag(request, self.limits)
        who = principal_name()
        row = await self.db.run_write(lambda s: flags.create(s, new, self.redact, who))
        metrics.FLAGS.labels(category_name(row.category), severity_name(row.severity)).inc()
        return pb.FlagOutputResponse(flag=flag_to_proto(row))

    async def ListFlags(
        self, request: pb.ListFlagsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListFlagsResponse:
        if request.status not in pb.FlagStatus.values():
            raise InvalidArgument("status", f"{request.status} is not a FlagStatus value")
        if request.category not in common_pb2.ErrorCategory.values():
            raise InvalidArgument("category", f"{request.category} is not an ErrorCategory value")
        if request.min_severity not in pb.Severity.values():
            raise InvalidArgument("min_severity", f"{request.min_severity} is not a Severity value")
        limit, offset = page_bounds(request.page_size, request.page_token)
        f = flags.Filter(
            request.status, request.category, request.model_version, request.min_severity
        )

        def page(s: Session) -> tuple[list[store.FlagRow], dict[str, feedback.View]]:
            rows = flags.list_flags(s, f, limit, offset)
            return rows, feedback.views(s, [r.id for r in rows])

        rows, delivery = await self.db.run_sync(page)
        return pb.ListFlagsResponse(
            flags=[flag_to_proto(r, delivery.get(r.id)) for r in rows],
            next_page_token=next_token(offset, limit, len(rows)),
        )

    async def ResolveFlag(
        self, request: pb.ResolveFlagRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveFlagResponse:
        if not request.flag_id:
            raise InvalidArgument("flag_id", "is required")
        status = {
            pb.RESOLUTION_CONFIRM: flags.CONFIRMED,
            pb.RESOLUTION_DISMISS: flags.DISMISSED,
        }.get(request.resolution)
        if status is None:
            raise InvalidArgument("resolution", "must be RESOLUTION_CONFIRM or RESOLUTION_DISMISS")
        reason = request.reason.strip()
        if status == flags.DISMISSED and not reason:
            raise InvalidArgument("reason", "is required when dismissing a flag")
        if len(reason) > self.limits.max_comment_chars:
            raise InvalidArgument(
                "reason", f"is longer than {self.limits.max_comment_chars} characters"
            )
        who = principal_name()

        def resolve(s: Session) -> tuple[store.FlagRow, feedback.View | None]:
            row = flags.resolve(s, request.flag_id, status, reason, self.redact, who)
            if row.status != flags.CONFIRMED:
                return row, None
            feedback.enqueue(s, row)  # same transaction: no confirmed flag is lost
            return row, feedback.views(s, [row.id]).get(row.id)

        row, delivery = await self.db.run_write(resolve)
        resolution = "confirm" if status == flags.CONFIRMED else "dismiss"
        metrics.RESOLUTIONS.labels(category_name(row.category), resolution).inc()
        return pb.ResolveFlagResponse(flag=flag_to_proto(row, delivery))

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
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
            lambda s: store.window_stats(
                s, request.model_version or None, start, end, flags.CONFIRMED
            )
        )
        return pb.GetStatsResponse(
            versions=[stats_to_proto(v, self.limits.psi_bins) for v in stats]
        )

    async def GetLineage(
        self, request: pb.GetLineageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLineageResponse:
        if not request.output_id:
            raise InvalidArgument("output_id", "is required: the output id from a provenance")
        if len(request.output_id) > 64:
            raise InvalidArgument("output_id", "is at most 64 characters")
        if self.peers is None:
            raise FailedPrecondition("this monitor has no peers to follow the lineage through")
        steps, model = await lineage.walk(
            self.db, self.peers.trainer, self.peers.preference, request.output_id
        )
        reply = pb.GetLineageResponse(
            steps=[
                pb.LineageStep(kind=s.kind, id=s.id, summary=s.summary, parent_id=s.parent_id)
                for s in steps
            ]
        )
        if model is not None:
            reply.model.CopyFrom(model)
        return reply

    async def EvaluateRetraining(
        self, request: pb.EvaluateRetrainingRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvaluateRetrainingResponse:
        assert self.loop is not None
        result = await self.loop.evaluate(request.dry_run)
        reply = pb.EvaluateRetrainingResponse(triggered=result.triggered, reasons=result.reasons)
        if result.run is not None:
            reply.run.CopyFrom(run_to_proto(result.run))
        return reply

    async def ListRetrainingRuns(
        self, request: pb.ListRetrainingRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRetrainingRunsResponse:
        limit, offset = page_bounds(request.page_size, request.page_token)
        runs = await self.db.run_sync(lambda s: retraining.list_runs(s, limit, offset))
        return pb.ListRetrainingRunsResponse(
            runs=[run_to_proto(r) for r in runs],
            next_page_token=next_token(offset, limit, len(runs)),
        )
