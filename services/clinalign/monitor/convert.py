"""Conversions between the monitor's domain types and its protobuf messages (no
validation: that is the use cases' job, ``usecases``)."""

from __future__ import annotations

from datetime import UTC, datetime

from clinalign.common.protos import datetime_from, enum_name, timestamp
from clinalign.common.v1 import common_pb2
from clinalign.monitor import drift, feedback, flags, outcomes, outputs, store
from clinalign.monitor.retraining import RunView
from clinalign.monitor.stats import CostModelSummary, WindowStats
from clinalign.monitor.v1 import monitor_pb2 as pb


def category_name(value: int) -> str:
    """``ERROR_CATEGORY_FACTUAL_ERROR`` → ``factual_error``, the preference store's names."""
    return enum_name(common_pb2.ErrorCategory, value)


def severity_name(value: int) -> str:
    return enum_name(pb.Severity, value)


def output_from_proto(out: pb.ProductionOutput, field: str) -> store.OutputRecord:
    created = (
        datetime_from(out.create_time, f"{field}.create_time")
        if out.HasField("create_time")
        else datetime.now(UTC)
    )
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
        task=out.task,
    )


def output_filter_from_proto(req: pb.ListOutputsRequest) -> outputs.Filter:
    start = datetime_from(req.start_time, "start_time") if req.HasField("start_time") else None
    end = datetime_from(req.end_time, "end_time") if req.HasField("end_time") else None
    return outputs.Filter(req.model_version, req.task, start, end, req.flag_state)


def output_to_proto(row: store.OutputRow) -> pb.ProductionOutput:
    """An output as stored; prompt and text empty once retention has erased them."""
    out = pb.ProductionOutput(
        output_id=row.output_id,
        prompt=row.prompt or "",
        text=row.text or "",
        model_version=row.model_version,
        prompt_template_version=row.prompt_template_version,
        latency_s=row.latency_s,
        completion_tokens=row.completion_tokens,
        create_time=timestamp(store.utc(row.created_at)),
        task=row.task,
    )
    if row.reward_score is not None:
        out.reward_score = row.reward_score
    return out


def output_summary_to_proto(s: outputs.Summary) -> pb.OutputSummary:
    return pb.OutputSummary(
        output=output_to_proto(s.output),
        open_flags=s.open_flags,
        confirmed_flags=s.confirmed_flags,
        dismissed_flags=s.dismissed_flags,
    )


def flag_from_proto(req: pb.FlagOutputRequest) -> flags.NewFlag:
    return flags.NewFlag(req.output_id, req.category, req.severity, req.comment, req.corrected_text)


def outcome_from_proto(req: pb.RecordOutcomeRequest) -> outcomes.NewOutcome:
    when = datetime_from(req.outcome_time, "outcome_time") if req.HasField("outcome_time") else None
    return outcomes.NewOutcome(req.output_id, req.outcome, when, req.source)


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


def replay_case_to_proto(case: flags.ReplayCase) -> pb.ReplayCase:
    return pb.ReplayCase(
        flag_id=case.flag_id,
        category=case.category,  # type: ignore[arg-type]
        severity=case.severity,  # type: ignore[arg-type]
        prompt=case.prompt,
        flagged_text=case.flagged_text,
        corrected_text=case.corrected_text,
        model_version=case.model_version,
    )


def _distribution(values: list[float]) -> pb.Distribution:
    s = drift.summarise(values)
    if s is None:
        return pb.Distribution()
    return pb.Distribution(count=s.count, mean=s.mean, p50=s.p50, p90=s.p90, p99=s.p99)


def stats_to_proto(v: WindowStats, bins: int) -> pb.VersionStats:
    out = pb.VersionStats(
        model_version=v.model_version,
        outputs=v.outputs,
        flag_rate=v.flag_rate,
        confirmed_flag_rate_by_category={
            category_name(c): n / v.outputs for c, n in sorted(v.confirmed_by_category.items())
        },
        reward_score=_distribution(v.reward_scores),
        latency_s=_distribution(v.latency),
        cost=_distribution(v.costs),
        accepted=v.accepted,
        overridden=v.overridden,
    )
    if v.acceptance_rate is not None:
        out.acceptance_rate = v.acceptance_rate
    if v.baseline_cost_mean is not None:
        out.baseline_cost_mean = v.baseline_cost_mean
    psi, ks = v.drift(bins)
    if psi is not None and ks is not None:
        out.reward_psi, out.reward_ks = psi, ks
    if v.baseline_flag_rate is not None:
        out.baseline_flag_rate = v.baseline_flag_rate
    return out


def cost_model_stats_to_proto(v: CostModelSummary) -> pb.CostModelStats:
    out = pb.CostModelStats(
        cost_model_version=v.cost_model_version,
        harmful=v.harmful,
        clean=v.clean,
        auroc_by_category={category_name(c): a for c, a in v.auroc_by_category.items()},
    )
    for name, value in v.figures.items():
        setattr(out, name, value)
    return out


def run_to_proto(run: RunView) -> pb.RetrainingRun:
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
