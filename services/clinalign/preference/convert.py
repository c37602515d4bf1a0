"""Protobuf ↔ domain conversions of the preference store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from clinalign.common.errors import InvalidArgument
from clinalign.common.protos import timestamp
from clinalign.common.v1 import common_pb2
from clinalign.preference import snapshots, store
from clinalign.preference.models import PromptRow, ResponseRow, SnapshotRow
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


def utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def meta(ctx: pb.LabelContext, task_id: str = "") -> store.LabelMeta:
    return store.LabelMeta(ctx.annotator_id, ctx.guideline_version, task_id or None)


def prompt_in(p: pb.PromptInput) -> store.PromptIn:
    return store.PromptIn(p.text, SOURCE_FROM_PROTO.get(p.source, ""), tuple(p.tags))


def comparison_in(c: pb.Comparison) -> store.ComparisonIn:
    return store.ComparisonIn(
        meta(c.context, c.task_id),
        c.response_a_id,
        c.response_b_id,
        PREFERENCE_FROM_PROTO.get(c.preference, ""),
        c.strength if c.strength else 1.0,
    )


def ranking_in(r: pb.Ranking) -> store.RankingIn:
    return store.RankingIn(meta(r.context, r.task_id), tuple(r.response_ids))


def rating_in(r: pb.Rating) -> store.RatingIn:
    return store.RatingIn(
        meta(r.context, r.task_id), r.response_id, AXIS_FROM_PROTO.get(r.axis, ""), r.score
    )


def correction_in(c: pb.Correction) -> store.CorrectionIn:
    return store.CorrectionIn(meta(c.context), c.response_id, c.corrected_text, c.comment)


def annotation_in(a: pb.ErrorAnnotation) -> store.ErrorAnnotationIn:
    return store.ErrorAnnotationIn(
        meta(a.context), a.response_id, CATEGORY_FROM_PROTO.get(a.category, ""), a.comment
    )


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


TIE_FROM_PROTO = {
    pb.TIE_HANDLING_UNSPECIFIED: "drop",
    pb.TIE_HANDLING_DROP: "drop",
    pb.TIE_HANDLING_KEEP: "keep",
}


def snapshot_filter(f: pb.SnapshotFilter) -> snapshots.Filter:
    sources = []
    for i, s in enumerate(f.sources):
        if s not in SOURCE_FROM_PROTO:
            raise InvalidArgument(f"filter.sources[{i}]", "must be a PROMPT_SOURCE_* value")
        sources.append(SOURCE_FROM_PROTO[s])
    if f.tie_handling not in TIE_FROM_PROTO:
        raise InvalidArgument("filter.tie_handling", "must be a TIE_HANDLING_* value")
    return snapshots.Filter(
        start=f.start_time.ToDatetime(UTC) if f.HasField("start_time") else None,
        end=f.end_time.ToDatetime(UTC) if f.HasField("end_time") else None,
        sources=tuple(sorted(set(sources))),
        min_agreement=f.min_agreement,
        tie_handling=TIE_FROM_PROTO[f.tie_handling],
        deduplicate=f.deduplicate,
        eval_fraction=f.eval_fraction or 0.1,
    )


def snapshot_out(row: SnapshotRow) -> pb.Snapshot:
    m = row.manifest
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
        manifest_json=json.dumps(m, sort_keys=True),
        create_time=timestamp(utc(row.created_at)),
    )
