"""The preference store's write path: de-identify, write and audit inside one transaction
keyed by the caller's idempotency key; and the reads of what was written.

A batch is written whole or not at all. Its ids are recorded under its idempotency key in
the same transaction, so a retried batch (after a lost acknowledgement, a crash or a
timeout) returns the ids of the first attempt and writes nothing twice. The service
acknowledges only after the commit, and SQLite runs with synchronous=FULL, so an
acknowledged batch is on disk.

The input records and limits live in ``domain``, their checks in ``validation``; the
use cases (``usecases``) run the checks, then these functions in one transaction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.orm import Session

from clinalign.common.errors import InvalidArgument, NotFound
from clinalign.preference import audit
from clinalign.preference.domain import (
    Annotator,
    Batch,
    ComparisonIn,
    CorrectionIn,
    ErrorAnnotationIn,
    LabelMeta,
    PromptIn,
    RankingIn,
    RatingIn,
    Redactor,
    ResponseIn,
    new_id,
    now,
)
from clinalign.preference.identity import Caller, registration
from clinalign.preference.models import (
    AnnotatorRow,
    ComparisonRow,
    CorrectionRow,
    ErrorAnnotationRow,
    GuidelineRow,
    IdempotencyRow,
    PromptRow,
    RankingRow,
    RatingRow,
    ResponseRow,
)
from clinalign.preference.models import Base as Base  # re-export for the app and tests
from clinalign.preference.validation import check_key, validate_annotator

# --- the transaction -------------------------------------------------------------------


def request_digest(*parts: object) -> str:
    """A digest of a request's content (its domain records' reprs, which are
    deterministic), so a replayed key with a different request is told apart. A field
    marked ``domain.ADDED_LATER`` is left out while it holds its default: a request that
    does not use it digests as it did before the field existed."""
    return hashlib.sha256(_stable_repr(parts).encode()).hexdigest()


def _stable_repr(value: object) -> str:
    """``repr(value)``, less the fields added later that hold their defaults."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        shown = [
            f"{f.name}={_stable_repr(getattr(value, f.name))}"
            for f in dataclasses.fields(value)
            if f.repr
            and not (f.metadata.get("digest_when_set") and getattr(value, f.name) == f.default)
        ]
        return f"{type(value).__qualname__}({', '.join(shown)})"
    if isinstance(value, list):
        return "[" + ", ".join(_stable_repr(v) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(_stable_repr(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _scoped(principal: str, key: str) -> str:
    """The stored key: the caller's key in the caller's own namespace."""
    return "c:" + hashlib.sha256(f"{principal}\x00{key}".encode()).hexdigest()


def idempotent(
    session: Session,
    key: str,
    rpc: str,
    principal: str,
    write: Callable[[], list[str]],
    request: str = "",
) -> Batch:
    """Runs ``write`` once per caller and key: a replay by the same caller returns the
    first attempt's ids; the same key from another caller is another batch. A replay
    whose ``request`` digest differs from the first attempt's is refused."""
    check_key(key)
    existing = session.get(IdempotencyRow, _scoped(principal, key))
    if existing is None:
        # Keys stored before they were scoped (release 0004 of this store) are the raw
        # key; only their own caller replays them.
        legacy = session.get(IdempotencyRow, key)
        existing = legacy if legacy is not None and legacy.principal == principal else None
    if existing is not None:
        if existing.rpc != rpc:
            raise InvalidArgument("idempotency_key", f"was already used for {existing.rpc}")
        if request and existing.request_hash and existing.request_hash != request:
            raise InvalidArgument(
                "idempotency_key", "was already used for a different request; use a fresh key"
            )
        return Batch(list(existing.result), replayed=True)
    ids = write()
    session.add(
        IdempotencyRow(
            key=_scoped(principal, key),
            rpc=rpc,
            principal=principal,
            request_hash=request,
            result=ids,
            created_at=now(),
        )
    )
    audit.append(session, principal, rpc, f"key={key} n={len(ids)}")
    return Batch(ids)


def _annotators(session: Session, metas: Sequence[tuple[str, LabelMeta]]) -> None:
    wanted = {m.annotator_id for _, m in metas}
    found = set(session.scalars(select(AnnotatorRow.id).where(AnnotatorRow.id.in_(wanted))))
    for f, m in metas:
        if m.annotator_id not in found:
            raise NotFound("annotator", m.annotator_id, field=f"{f}.context.annotator_id")


def response_prompts(session: Session, refs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """response id -> prompt id for referenced responses (two columns, not whole rows)."""
    wanted = {rid for _, rid in refs}
    conn = session.connection()
    # One array parameter instead of thousands of bound values: the lookup is on the hot
    # path of every label batch.
    if conn.dialect.name == "sqlite":
        query = text(
            "SELECT id, prompt_id FROM responses WHERE id IN (SELECT value FROM json_each(:ids))"
        )
        rows = conn.execute(query, {"ids": json.dumps(sorted(wanted))}).all()
    else:
        query = text("SELECT id, prompt_id FROM responses WHERE id = ANY(:ids)")
        rows = conn.execute(query, {"ids": sorted(wanted)}).all()
    found: dict[str, str] = {str(r[0]): str(r[1]) for r in rows}
    for f, rid in refs:
        if rid not in found:
            raise NotFound("response", rid, field=f)
    return found


def upsert_annotator(session: Session, caller: Caller, a: Annotator) -> Annotator:
    """Registers an annotator or updates its role and specialty; its link to a subject
    follows ``identity.registration``."""
    validate_annotator(a)
    a = registration(session, caller, a)
    t = now()
    row = session.get(AnnotatorRow, a.id)
    if row is None:
        session.add(
            AnnotatorRow(
                id=a.id,
                role=a.role,
                specialty=a.specialty,
                subject=a.subject or None,
                created_at=t,
                updated_at=t,
            )
        )
        linked = bool(a.subject)
    else:
        linked = row.subject != (a.subject or None)
        row.role, row.specialty, row.updated_at = a.role, a.specialty, t
        row.subject = a.subject or None
    audit.append(session, caller.shown, "register_annotator", a.id + (" linked" if linked else ""))
    return a


def add_prompts(
    session: Session, prompts: Sequence[PromptIn], redact: Redactor, principal: str
) -> list[str]:
    # Core bulk inserts on the hot paths: the ORM's unit of work costs several times more
    # per row, and these rows need none of its bookkeeping.
    t = now()
    rows: list[dict[str, Any]] = []
    for p in prompts:
        clean = redact(p.text)
        rows.append(
            {
                "id": new_id("p"),
                "text": clean,
                "text_sha256": hashlib.sha256(clean.encode()).hexdigest(),
                "source": p.source,
                "tags": list(p.tags),
                "created_by": principal,
                "created_at": t,
            }
        )
    session.connection().execute(insert(cast(Table, PromptRow.__table__)), rows)
    return [r["id"] for r in rows]


def add_responses(
    session: Session, responses: Sequence[ResponseIn], redact: Redactor, principal: str
) -> list[str]:
    wanted = {r.prompt_id for r in responses}
    found = set(session.scalars(select(PromptRow.id).where(PromptRow.id.in_(wanted))))
    for i, r in enumerate(responses):
        if r.prompt_id not in found:
            raise NotFound("prompt", r.prompt_id, field=f"responses[{i}].prompt_id")
    t = now()
    rows: list[dict[str, Any]] = [
        {
            "id": new_id("r"),
            "prompt_id": r.prompt_id,
            "text": redact(r.text),
            "model_version": r.model_version,
            "generation_params": r.generation_params,
            "created_by": principal,
            "created_at": t,
        }
        for r in responses
    ]
    session.connection().execute(insert(cast(Table, ResponseRow.__table__)), rows)
    return [r["id"] for r in rows]


def add_comparisons(session: Session, items: Sequence[ComparisonIn]) -> list[str]:
    fields = [f"comparisons[{i}]" for i in range(len(items))]
    _annotators(session, list(zip(fields, (c.meta for c in items), strict=True)))
    prompt_of = response_prompts(
        session,
        [
            (f"{f}.response_{s}_id", getattr(c, f"response_{s}_id"))
            for f, c in zip(fields, items, strict=True)
            for s in ("a", "b")
        ],
    )
    t = now()
    rows: list[dict[str, Any]] = []
    for f, c in zip(fields, items, strict=True):
        prompt_id = prompt_of[c.response_a_id]
        if prompt_id != prompt_of[c.response_b_id]:
            raise InvalidArgument(
                f"{f}.response_b_id", "answers a different prompt than response_a_id"
            )
        rows.append(
            {
                "id": new_id("c"),
                "prompt_id": prompt_id,
                "response_a_id": c.response_a_id,
                "response_b_id": c.response_b_id,
                "preference": c.preference,
                "strength": 0.0 if c.preference == "tie" else c.strength,
                "correction_id": None,
                "annotator_id": c.meta.annotator_id,
                "guideline_version": c.meta.guideline_version,
                "task_id": c.meta.task_id,
                "created_at": t,
            }
        )
    session.connection().execute(insert(cast(Table, ComparisonRow.__table__)), rows)
    return [r["id"] for r in rows]


def add_rankings(session: Session, items: Sequence[RankingIn]) -> list[str]:
    fields = [f"rankings[{i}]" for i in range(len(items))]
    _annotators(session, list(zip(fields, (r.meta for r in items), strict=True)))
    prompt_of = response_prompts(
        session,
        [
            (f"{f}.response_ids[{j}]", rid)
            for f, r in zip(fields, items, strict=True)
            for j, rid in enumerate(r.response_ids)
        ],
    )
    t = now()
    ids = []
    for f, r in zip(fields, items, strict=True):
        prompts = {prompt_of[rid] for rid in r.response_ids}
        if len(prompts) != 1:
            raise InvalidArgument(f"{f}.response_ids", "must all answer the same prompt")
        rid_ = new_id("k")
        session.add(
            RankingRow(
                id=rid_,
                prompt_id=prompts.pop(),
                response_ids=list(r.response_ids),
                annotator_id=r.meta.annotator_id,
                guideline_version=r.meta.guideline_version,
                task_id=r.meta.task_id,
                created_at=t,
            )
        )
        ids.append(rid_)
    return ids


def add_ratings(session: Session, items: Sequence[RatingIn]) -> list[str]:
    fields = [f"ratings[{i}]" for i in range(len(items))]
    _annotators(session, list(zip(fields, (r.meta for r in items), strict=True)))
    response_prompts(
        session, [(f"{f}.response_id", r.response_id) for f, r in zip(fields, items, strict=True)]
    )
    t = now()
    ids = []
    for r in items:
        rid = new_id("t")
        session.add(
            RatingRow(
                id=rid,
                response_id=r.response_id,
                axis=r.axis,
                score=r.score,
                annotator_id=r.meta.annotator_id,
                guideline_version=r.meta.guideline_version,
                task_id=r.meta.task_id,
                created_at=t,
            )
        )
        ids.append(rid)
    return ids


def add_corrections(
    session: Session, items: Sequence[CorrectionIn], redact: Redactor, principal: str
) -> list[str]:
    """Each correction stores the rewrite as a human response and an implicit comparison
    preferring it over the original (strength 1), attributed to the correcting clinician."""
    fields = [f"corrections[{i}]" for i in range(len(items))]
    _annotators(session, list(zip(fields, (c.meta for c in items), strict=True)))
    originals = response_prompts(
        session, [(f"{f}.response_id", c.response_id) for f, c in zip(fields, items, strict=True)]
    )
    t = now()
    fixed_ids = [new_id("r") for _ in items]
    ids = [new_id("x") for _ in items]
    # Rows of three tables reference each other without ORM relationships, so each table
    # is flushed before the next one points at it.
    for c, fixed_id in zip(items, fixed_ids, strict=True):
        session.add(
            ResponseRow(
                id=fixed_id,
                prompt_id=originals[c.response_id],
                text=redact(c.corrected_text),
                model_version=f"human:{c.meta.annotator_id}",
                generation_params="",
                created_by=principal,
                created_at=t,
            )
        )
    session.flush()
    for c, fixed_id, cid in zip(items, fixed_ids, ids, strict=True):
        session.add(
            CorrectionRow(
                id=cid,
                response_id=c.response_id,
                corrected_response_id=fixed_id,
                comment=redact(c.comment) if c.comment else "",
                annotator_id=c.meta.annotator_id,
                guideline_version=c.meta.guideline_version,
                task_id=c.meta.task_id,
                created_at=t,
            )
        )
        session.add(
            ComparisonRow(
                id=new_id("c"),
                prompt_id=originals[c.response_id],
                response_a_id=fixed_id,
                response_b_id=c.response_id,
                preference="a",
                strength=1.0,
                correction_id=cid,
                annotator_id=c.meta.annotator_id,
                guideline_version=c.meta.guideline_version,
                task_id=c.meta.task_id,
                created_at=t,
            )
        )
    return ids


def add_annotations(
    session: Session, items: Sequence[ErrorAnnotationIn], redact: Redactor
) -> list[str]:
    fields = [f"annotations[{i}]" for i in range(len(items))]
    _annotators(session, list(zip(fields, (a.meta for a in items), strict=True)))
    response_prompts(
        session, [(f"{f}.response_id", a.response_id) for f, a in zip(fields, items, strict=True)]
    )
    _check_spans(session, fields, items)
    t = now()
    ids = []
    for a in items:
        aid = new_id("e")
        session.add(
            ErrorAnnotationRow(
                id=aid,
                response_id=a.response_id,
                category=a.category,
                severity=a.severity,
                span_start=a.span_start,
                span_end=a.span_end,
                comment=redact(a.comment) if a.comment else "",
                annotator_id=a.meta.annotator_id,
                guideline_version=a.meta.guideline_version,
                task_id=a.meta.task_id,
                created_at=t,
            )
        )
        ids.append(aid)
    return ids


def _check_spans(
    session: Session, fields: Sequence[str], items: Sequence[ErrorAnnotationIn]
) -> None:
    """Each span (already ordered, ``validation.check_span``) ends within its response's
    stored text; the length is counted in the database, in characters as Python counts."""
    spanned = [(f, a) for f, a in zip(fields, items, strict=True) if a.span_end is not None]
    if not spanned:
        return
    wanted = {a.response_id for _, a in spanned}
    length_of = {
        rid: int(n)
        for rid, n in session.execute(
            select(ResponseRow.id, func.length(ResponseRow.text)).where(ResponseRow.id.in_(wanted))
        )
    }
    for f, a in spanned:
        n = length_of[a.response_id]
        if a.span_end is not None and a.span_end > n:
            raise InvalidArgument(
                f"{f}.span_end",
                f"is {a.span_end}, past the end of response {a.response_id} ({n} characters)",
            )


def get_prompt(session: Session, prompt_id: str) -> tuple[PromptRow, list[ResponseRow]]:
    prompt = session.get(PromptRow, prompt_id)
    if prompt is None:
        raise NotFound("prompt", prompt_id, field="id")
    responses = list(
        session.scalars(
            select(ResponseRow)
            .where(ResponseRow.prompt_id == prompt_id)
            .order_by(ResponseRow.created_at, ResponseRow.id)
        )
    )
    return prompt, responses


def publish_guidelines(session: Session, principal: str, version: str, text: str) -> str:
    """A version is immutable: publishing it again with the same text changes nothing."""
    existing = session.get(GuidelineRow, version)
    if existing is not None:
        if existing.text != text:
            raise InvalidArgument("version", f"{version!r} is published already and immutable")
        return version
    session.add(GuidelineRow(version=version, text=text, created_at=now()))
    audit.append(session, principal, "publish_guidelines", version)
    return version
