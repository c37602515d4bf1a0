"""Checks of the preference store's input records: each raises ``InvalidArgument`` naming
the offending field (``comparisons[3].strength``) and the fix. The use cases run them
before they open a transaction; checks that need the database (unknown ids, a response
of another prompt) run inside it, in ``store`` and ``queue``."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from clinalign.common.errors import InvalidArgument
from clinalign.preference.domain import (
    AXES,
    CATEGORIES,
    PREFERENCES,
    RATING_SCALE,
    SEVERITIES,
    SOURCES,
    Annotator,
    ComparisonIn,
    CorrectionIn,
    ErrorAnnotationIn,
    LabelMeta,
    Limits,
    PromptIn,
    RankingIn,
    RatingIn,
    ResponseIn,
)

# Pseudonymous ids only: letters, digits and - _ . so a name or e-mail cannot pass as one.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$")
_LABEL = re.compile(r"^[a-z0-9][a-z0-9 _-]{0,63}$")
_TAG = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")


def validate_annotator(a: Annotator) -> None:
    if not _ID.match(a.id) or "@" in a.id:
        raise InvalidArgument(
            "annotator.id", "must be a pseudonymous id of 3-64 letters, digits, '.', '_' or '-'"
        )
    if not _LABEL.match(a.role):
        raise InvalidArgument("annotator.role", "is required: lower-case, such as 'physician'")
    if a.specialty and not _LABEL.match(a.specialty):
        raise InvalidArgument("annotator.specialty", "must be lower-case, such as 'cardiology'")
    if len(a.subject) > 255 or not a.subject.isprintable():
        raise InvalidArgument("annotator.subject", "must be at most 255 printable characters")


def check_key(key: str) -> None:
    if not 8 <= len(key) <= 128 or not key.isprintable():
        raise InvalidArgument("idempotency_key", "is required: 8 to 128 printable characters")


def check_batch(field_name: str, items: Sequence[object], limits: Limits) -> None:
    if not items:
        raise InvalidArgument(field_name, "must hold at least one item")
    if len(items) > limits.max_batch:
        raise InvalidArgument(
            field_name, f"holds {len(items)}; at most {limits.max_batch} per call"
        )


def check_text(field_name: str, text: str, limits: Limits, *, required: bool = True) -> None:
    if required and not text.strip():
        raise InvalidArgument(field_name, "must not be empty")
    if len(text) > limits.max_text_chars:
        raise InvalidArgument(
            field_name, f"is {len(text)} characters; at most {limits.max_text_chars}"
        )


def check_required(field_name: str, value: str) -> None:
    if not value:
        raise InvalidArgument(field_name, "is required")


def check_prompt(f: str, p: PromptIn, limits: Limits) -> None:
    check_text(f"{f}.text", p.text, limits)
    if p.source not in SOURCES:
        raise InvalidArgument(f"{f}.source", f"must be one of {', '.join(SOURCES)}")
    if len(p.tags) > limits.max_tags:
        raise InvalidArgument(f"{f}.tags", f"at most {limits.max_tags} tags")
    for j, tag in enumerate(p.tags):
        if not _TAG.match(tag):
            raise InvalidArgument(
                f"{f}.tags[{j}]", "must be lower-case, such as 'specialty:cardiology'"
            )


MAX_GENERATION_PARAMS_CHARS = 16_384


def check_generation_params(f: str, r: ResponseIn) -> None:
    if not r.generation_params:
        return
    if len(r.generation_params) > MAX_GENERATION_PARAMS_CHARS:
        raise InvalidArgument(
            f"{f}.generation_params_json", f"is over {MAX_GENERATION_PARAMS_CHARS} characters"
        )
    try:
        json.loads(r.generation_params)
    except (ValueError, RecursionError) as exc:
        # RecursionError: nesting deeper than the parser's stack, a caller's mistake too
        raise InvalidArgument(f"{f}.generation_params_json", "must be JSON") from exc


def check_response(f: str, r: ResponseIn, limits: Limits) -> None:
    check_required(f"{f}.prompt_id", r.prompt_id)
    check_text(f"{f}.text", r.text, limits)


def check_meta(f: str, meta: LabelMeta) -> None:
    if not meta.annotator_id:
        raise InvalidArgument(f"{f}.context.annotator_id", "is required")
    if not meta.guideline_version:
        raise InvalidArgument(f"{f}.context.guideline_version", "is required")


def check_comparison(f: str, c: ComparisonIn) -> None:
    check_meta(f, c.meta)
    if not c.response_a_id:
        raise InvalidArgument(f"{f}.response_a_id", "is required")
    if not c.response_b_id:
        raise InvalidArgument(f"{f}.response_b_id", "is required")
    if c.response_a_id == c.response_b_id:
        raise InvalidArgument(f"{f}.response_b_id", "compares a response with itself")
    if c.preference not in PREFERENCES:
        raise InvalidArgument(
            f"{f}.preference", "must be PREFERENCE_A, PREFERENCE_B or PREFERENCE_TIE"
        )
    if not 0.0 <= c.strength <= 1.0:
        raise InvalidArgument(f"{f}.strength", f"must be in [0, 1], got {c.strength:g}")


def check_ranking(f: str, r: RankingIn) -> None:
    check_meta(f, r.meta)
    if len(r.response_ids) < 2:
        raise InvalidArgument(f"{f}.response_ids", "must rank at least two responses")
    if len(set(r.response_ids)) != len(r.response_ids):
        raise InvalidArgument(f"{f}.response_ids", "must not repeat a response")


def check_rating(f: str, r: RatingIn) -> None:
    check_meta(f, r.meta)
    if not r.response_id:
        raise InvalidArgument(f"{f}.response_id", "is required")
    if r.axis not in AXES:
        raise InvalidArgument(f"{f}.axis", f"must be one of {', '.join(AXES)}")
    lo, hi = RATING_SCALE
    if not lo <= r.score <= hi:
        raise InvalidArgument(f"{f}.score", f"must be between {lo} and {hi}, got {r.score}")


def check_correction(f: str, c: CorrectionIn, limits: Limits) -> None:
    check_meta(f, c.meta)
    if not c.response_id:
        raise InvalidArgument(f"{f}.response_id", "is required")
    check_text(f"{f}.corrected_text", c.corrected_text, limits)
    check_text(f"{f}.comment", c.comment, limits, required=False)


def check_annotation(f: str, a: ErrorAnnotationIn, limits: Limits) -> None:
    check_meta(f, a.meta)
    if not a.response_id:
        raise InvalidArgument(f"{f}.response_id", "is required")
    if a.category not in CATEGORIES:
        raise InvalidArgument(f"{f}.category", "must be a category of the clinical taxonomy")
    if a.severity and a.severity not in SEVERITIES:
        raise InvalidArgument(
            f"{f}.severity", "must be SEVERITY_LOW, _MODERATE, _HIGH or _CRITICAL, or unset"
        )
    check_text(f"{f}.comment", a.comment, limits, required=False)
    check_span(f, a)


def check_span(f: str, a: ErrorAnnotationIn) -> None:
    """Both span offsets or neither, ordered; that the end lies within the response is
    checked against its stored text when it is written (``store.add_annotations``)."""
    if (a.span_start is None) != (a.span_end is None):
        given, missing = (
            ("span_start", "span_end") if a.span_end is None else ("span_end", "span_start")
        )
        raise InvalidArgument(
            f"{f}.{missing}",
            f"is required with {given}: give both, or neither for the whole response",
        )
    if a.span_start is None or a.span_end is None:
        return
    if a.span_start < 0:
        raise InvalidArgument(f"{f}.span_start", f"must be at least 0, got {a.span_start}")
    if a.span_end <= a.span_start:
        raise InvalidArgument(
            f"{f}.span_end", f"must be greater than span_start ({a.span_start}), got {a.span_end}"
        )


def check_guidelines(version: str, text: str) -> None:
    if not _TAG.match(version):
        raise InvalidArgument("version", "is required: lower-case letters, digits, '.', '-', ':'")
    if not text.strip():
        raise InvalidArgument("text", "must not be empty")
