"""Protobuf ↔ domain conversions of the preference store. Nothing here checks a value: an
enum value with no domain meaning becomes ``""`` (or the documented default where the
proto has one), which the use case then rejects, naming the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

from clinalign.common.protos import datetime_from, timestamp
from clinalign.common.v1 import common_pb2
from clinalign.preference import audit, queue, snapshots
from clinalign.preference.domain import (
    Annotator,
    ComparisonIn,
    CorrectionIn,
    ErrorAnnotationIn,
    LabelMeta,
    PromptIn,
    RankingIn,
    RatingIn,
    ResponseIn,
)
from clinalign.preference.models import AuditRow, PromptRow, ResponseRow, SnapshotRow
from clinalign.preference.usecases import exports, labelling
from clinalign.preference.v1 import preference_pb2 as pb

SOURCE_FROM_PROTO = {
    pb.PROMPT_SOURCE_CURATED: "curated",
    pb.PROMPT_SOURCE_PRODUCTION: "production",
    pb.PROMPT_SOURCE_FLAGGED: "flagged",
}
SOURCE_TO_PROTO = {v: k for k, v in SOURCE_FROM_PROTO.items()}
PREFERENCE_FROM_PROTO = {pb.PREFERENCE_A: "a", pb.PREFERENCE_B: "b", pb.PREFERENCE_TIE: "tie"}
AXIS_FROM_PROTO = {
    pb.RATING_AXIS_ACCURACY: "accuracy",
    pb.RATING_AXIS_SAFETY: "safety",
    pb.RATING_AXIS_COMPLETENESS: "completeness",
    pb.RATING_AXIS_CLARITY: "clarity",
}
CATEGORY_FROM_PROTO = {
    common_pb2.ERROR_CATEGORY_FACTUAL_ERROR: "factual_error",
    common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE: "unsafe_advice",
    common_pb2.ERROR_CATEGORY_OMISSION: "omission",
    common_pb2.ERROR_CATEGORY_HALLUCINATED_REFERENCE: "hallucinated_reference",
    common_pb2.ERROR_CATEGORY_INAPPROPRIATE_CERTAINTY: "inappropriate_certainty",
    common_pb2.ERROR_CATEGORY_BIAS: "bias",
    common_pb2.ERROR_CATEGORY_PRIVACY_LEAK: "privacy_leak",
}
SEVERITY_FROM_PROTO = {
    common_pb2.SEVERITY_LOW: "low",
    common_pb2.SEVERITY_MODERATE: "moderate",
    common_pb2.SEVERITY_HIGH: "high",
    common_pb2.SEVERITY_CRITICAL: "critical",
}
TIE_FROM_PROTO = {
    pb.TIE_HANDLING_UNSPECIFIED: "drop",
    pb.TIE_HANDLING_DROP: "drop",
    pb.TIE_HANDLING_KEEP: "keep",
}
FORMAT_FROM_PROTO = {
    pb.EXPORT_FORMAT_JSONL: exports.JSONL,
    pb.EXPORT_FORMAT_PARQUET: exports.PARQUET,
}
KIND_FROM_PROTO = {
    pb.EXPORT_KIND_PREFERENCE: snapshots.PREFERENCE,
    pb.EXPORT_KIND_SFT: snapshots.SFT,
    pb.EXPORT_KIND_HARM: snapshots.HARM,
}
# SPLIT_UNSPECIFIED (and any value the proto does not define) asks for both splits.
SPLIT_FROM_PROTO = {pb.SPLIT_TRAIN: snapshots.TRAIN, pb.SPLIT_EVAL: snapshots.EVAL}


def utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# --- requests → domain -----------------------------------------------------------------


def annotator_in(request: pb.RegisterAnnotatorRequest) -> Annotator | None:
    if not request.HasField("annotator"):
        return None
    a = request.annotator
    return Annotator(a.id, a.role, a.specialty, a.subject)


def meta(ctx: pb.LabelContext, task_id: str = "") -> LabelMeta:
    return LabelMeta(ctx.annotator_id, ctx.guideline_version, task_id or None)


def prompt_in(p: pb.PromptInput) -> PromptIn:
    return PromptIn(p.text, SOURCE_FROM_PROTO.get(p.source, ""), tuple(p.tags))


def response_in(r: pb.ResponseInput) -> ResponseIn:
    return ResponseIn(r.prompt_id, r.text, r.model_version, r.generation_params_json)


def comparison_in(c: pb.Comparison) -> ComparisonIn:
    return ComparisonIn(
        meta(c.context, c.task_id),
        c.response_a_id,
        c.response_b_id,
        PREFERENCE_FROM_PROTO.get(c.preference, ""),
        c.strength if c.strength else 1.0,
    )


def ranking_in(r: pb.Ranking) -> RankingIn:
    return RankingIn(meta(r.context, r.task_id), tuple(r.response_ids))


def rating_in(r: pb.Rating) -> RatingIn:
    return RatingIn(
        meta(r.context, r.task_id), r.response_id, AXIS_FROM_PROTO.get(r.axis, ""), r.score
    )


def correction_in(c: pb.Correction) -> CorrectionIn:
    return CorrectionIn(meta(c.context), c.response_id, c.corrected_text, c.comment)


def annotation_in(a: pb.ErrorAnnotation) -> ErrorAnnotationIn:
    # a value the proto does not define stays visible ("#9"), so validation names it
    severity = SEVERITY_FROM_PROTO.get(a.severity, f"#{a.severity}") if a.severity else ""
    return ErrorAnnotationIn(
        meta(a.context),
        a.response_id,
        CATEGORY_FROM_PROTO.get(a.category, ""),
        a.comment,
        severity,
        a.span_start if a.HasField("span_start") else None,
        a.span_end if a.HasField("span_end") else None,
    )


def task_spec(t: pb.TaskSpec) -> queue.TaskSpec:
    return queue.TaskSpec(t.prompt_id, tuple(t.response_ids))


def task_submission(request: pb.SubmitTaskRequest) -> labelling.TaskSubmission:
    which = request.WhichOneof("label")
    label: ComparisonIn | RankingIn | None = None
    if which == "comparison":
        label = comparison_in(request.comparison)
    elif which == "ranking":
        label = ranking_in(request.ranking)
    return labelling.TaskSubmission(
        request.task_id,
        request.annotator_id,
        label,
        [rating_in(r) for r in request.ratings],
        [annotation_in(a) for a in request.annotations],
        tuple(request.presented_response_ids),
    )


def adjudication_threshold(request: pb.GetAgreementRequest) -> float:
    return request.adjudication_threshold or labelling.DEFAULT_ADJUDICATION_THRESHOLD


def snapshot_filter(f: pb.SnapshotFilter) -> snapshots.Filter:
    return snapshots.Filter(
        start=datetime_from(f.start_time, "filter.start_time")
        if f.HasField("start_time")
        else None,
        end=datetime_from(f.end_time, "filter.end_time") if f.HasField("end_time") else None,
        sources=tuple(SOURCE_FROM_PROTO.get(s, "") for s in f.sources),
        min_agreement=f.min_agreement,
        tie_handling=TIE_FROM_PROTO.get(f.tie_handling, ""),
        deduplicate=f.deduplicate,
        eval_fraction=f.eval_fraction or 0.1,
    )


# --- domain → responses ----------------------------------------------------------------


def annotator_out(a: Annotator) -> pb.Annotator:
    return pb.Annotator(id=a.id, role=a.role, specialty=a.specialty, subject=a.subject)


def prompt_out(row: PromptRow) -> pb.Prompt:
    return pb.Prompt(
        id=row.id,
        text=row.text,
        source=SOURCE_TO_PROTO[row.source],
        tags=list(row.tags),
        create_time=timestamp(utc(row.created_at)),
    )


def response_out(row: ResponseRow) -> pb.Response:
    return pb.Response(
        id=row.id,
        prompt_id=row.prompt_id,
        text=row.text,
        model_version=row.model_version,
        generation_params_json=row.generation_params,
        create_time=timestamp(utc(row.created_at)),
    )


def task_out(view: queue.TaskView) -> pb.Task:
    return pb.Task(
        id=view.task.id,
        batch_id=view.task.batch_id,
        prompt=prompt_out(view.prompt),
        responses=[response_out(r) for r in view.responses],
        guideline_version=view.task.guideline_version,
        guideline_text=view.guideline_text,
    )


def agreement_out(a: labelling.Agreement) -> pb.GetAgreementResponse:
    report = a.report
    out = pb.AgreementReport(
        items=report.pairable_items,
        annotators=report.annotators,
        position_labels=a.position.labels,
    )
    for name in ("raw_agreement", "cohen_kappa", "fleiss_kappa", "krippendorff_alpha"):
        value = getattr(report, name)
        if value is not None:
            setattr(out, name, value)
    if a.position.first_shown_share is not None:
        out.first_shown_share = a.position.first_shown_share
    return pb.GetAgreementResponse(
        report=out,
        adjudication=[
            pb.TaskConsensus(task_id=c.item_id, consensus=c.consensus, labels=c.n_labels)
            for c in a.adjudication
        ],
        annotators=[
            pb.AnnotatorAgreement(
                annotator_id=x.annotator_id, labels=x.labels, agreement=x.agreement
            )
            for x in a.annotators
        ],
    )


def progress_out(p: queue.Progress) -> pb.GetProgressResponse:
    return pb.GetProgressResponse(
        annotator_id=p.annotator_id,
        labelled_today=p.labelled_today,
        labelled_total=p.labelled_total,
        remaining=p.remaining,
        skipped=p.skipped,
    )


def audit_event_out(row: AuditRow) -> pb.AuditEvent:
    return pb.AuditEvent(
        sequence=row.seq,
        principal=row.principal,
        action=row.action,
        object=row.object,
        time=timestamp(utc(row.at)),
        entry_hash=row.entry_hash,
    )


def verification_out(v: audit.Verification) -> pb.VerifyAuditResponse:
    return pb.VerifyAuditResponse(
        ok=v.ok, entries=v.entries, first_bad_sequence=v.first_bad_sequence, message=v.message
    )


def snapshot_out(row: SnapshotRow) -> pb.Snapshot:
    m = row.manifest
    counts = cast(dict[str, Any], m.get("counts") or {})
    flt: dict[str, Any] = dict(row.filter)
    proto_filter = pb.SnapshotFilter(
        sources=[SOURCE_TO_PROTO[s] for s in flt.get("sources", [])],
        min_agreement=float(flt.get("min_agreement", 0.0)),
        tie_handling=pb.TIE_HANDLING_KEEP
        if flt.get("tie_handling") == "keep"
        else pb.TIE_HANDLING_DROP,
        deduplicate=bool(flt.get("deduplicate")),
        eval_fraction=float(flt.get("eval_fraction", 0.1)),
    )
    return pb.Snapshot(
        id=row.id,
        content_hash=row.content_hash,
        filter=proto_filter,
        train_pairs=row.train_pairs,
        eval_pairs=row.eval_pairs,
        sft_records=row.sft_records,
        harm_records=int(counts.get("harm_train", 0)) + int(counts.get("harm_eval", 0)),
        manifest_json=json.dumps(m, sort_keys=True),
        create_time=timestamp(utc(row.created_at)),
    )


def export_out(export: exports.Export) -> Iterator[pb.ExportSnapshotResponse]:
    """The file in chunks: the first message counts the records, the last carries the
    file's SHA-256."""
    last = len(export.chunks) - 1
    for i, part in enumerate(export.chunks):
        yield pb.ExportSnapshotResponse(
            chunk=part,
            records=export.records if i == 0 else 0,
            file_sha256=export.sha256 if i == last else "",
        )
