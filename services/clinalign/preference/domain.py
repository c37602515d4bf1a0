"""The preference store's vocabulary, request limits and input records: what the use
cases take in and the store writes, free of protobuf and of the database."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clinalign.preference.config import PreferenceSettings

SOURCES = ("curated", "production", "flagged")
PREFERENCES = ("a", "b", "tie")
AXES = ("accuracy", "safety", "completeness", "clarity")
CATEGORIES = (
    "factual_error",
    "unsafe_advice",
    "omission",
    "hallucinated_reference",
    "inappropriate_certainty",
    "bias",
    "privacy_leak",
)
RATING_SCALE = (1, 5)
# How badly an annotated error could harm (clinalign.common.v1.Severity), lowest first.
SEVERITIES = ("low", "moderate", "high", "critical")


# De-identifies free text before it is stored (``clinalign.common.deid.build_redactor``).
Redactor = Callable[[str], str]


@dataclass(frozen=True)
class Limits:
    """Request limits: the two settings (``PreferenceSettings``, where each is documented and
    has its default) and the tag cap, which is no setting."""

    max_text_chars: int
    max_batch: int
    max_tags: int = 16

    @classmethod
    def from_settings(cls, settings: PreferenceSettings) -> Limits:
        return cls(max_text_chars=settings.max_text_chars, max_batch=settings.max_batch)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Annotator:
    id: str
    role: str
    specialty: str
    subject: str = ""  # the principal this annotator is; "" when not linked


@dataclass(frozen=True)
class PromptIn:
    text: str
    source: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResponseIn:
    prompt_id: str
    text: str
    model_version: str = ""
    generation_params: str = ""  # JSON, or empty


@dataclass(frozen=True)
class LabelMeta:
    annotator_id: str
    guideline_version: str
    task_id: str | None = None


@dataclass(frozen=True)
class ComparisonIn:
    meta: LabelMeta
    response_a_id: str
    response_b_id: str
    preference: str  # a | b | tie
    strength: float = 1.0


@dataclass(frozen=True)
class RankingIn:
    meta: LabelMeta
    response_ids: tuple[str, ...]


@dataclass(frozen=True)
class RatingIn:
    meta: LabelMeta
    response_id: str
    axis: str
    score: int


@dataclass(frozen=True)
class CorrectionIn:
    meta: LabelMeta
    response_id: str
    corrected_text: str
    comment: str = ""


# Metadata of a field added to an input record after its first release: the field enters
# a request's idempotency digest only when it differs from its default, so a request sent
# before the field existed has the digest it had then (``store.request_digest``), and its
# retry across an upgrade still replays.
ADDED_LATER = {"digest_when_set": True}


@dataclass(frozen=True)
class ErrorAnnotationIn:
    meta: LabelMeta
    response_id: str
    category: str
    comment: str = ""
    severity: str = ""  # one of SEVERITIES, or "" when not given
    # Character offsets [span_start, span_end) into the response text; both None: the
    # whole response.
    span_start: int | None = field(default=None, metadata=ADDED_LATER)
    span_end: int | None = field(default=None, metadata=ADDED_LATER)


@dataclass
class Batch:
    """Results of one submit call."""

    ids: list[str] = field(default_factory=list)
    replayed: bool = False
