"""Immutable, content-hashed training snapshots and their export.

``create`` selects labels by a filter, turns them into canonical records, splits them
train/eval by a hash of the prompt (so a prompt and all its pairs land in one split, and
the split never moves as data grows), hashes the records, and copies them into
``snapshot_records``. The same filter over the same data gives the same records, hence
the same hash and the same snapshot: ``create`` then returns the existing one. Exports
read only the copied records, so they are byte for byte what was hashed, whatever has
been written since.

Record formats are the ones TRL's trainers read:
- preference (reward model, DPO): ``prompt``, ``chosen``, ``rejected`` plus lineage
  fields (ids, annotator, guideline version, source, tags, ``tie``, ``strength``,
  ``rejected_error_categories``);
- sft: ``prompt``, ``completion`` (clinician corrections and human-written responses);
- harm (cost models): ``prompt``, ``response``, ``categories``, ``severity``: every
  model-written response a label in the window judged (compared, ranked, rated, corrected
  or annotated), with the error categories annotated on it and the highest severity among
  them ("" where none was given); no category marks it clean.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from clinalign import __version__
from clinalign.common.errors import InvalidArgument, NotFound
from clinalign.preference import audit, domain
from clinalign.preference.agreement import Label, agreement_report
from clinalign.preference.models import (
    ComparisonRow,
    CorrectionRow,
    ErrorAnnotationRow,
    PromptRow,
    RankingRow,
    RatingRow,
    ResponseRow,
    SnapshotRecordRow,
    SnapshotRow,
    TaskRow,
)

# 2: harm records (issue 21); a snapshot cut before holds none
SCHEMA_VERSION = 2
PREFERENCE, SFT, HARM = "preference", "sft", "harm"
KINDS = (PREFERENCE, SFT, HARM)
TRAIN, EVAL = "train", "eval"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Filter:
    start: datetime | None = None
    end: datetime | None = None
    sources: tuple[str, ...] = ()
    min_agreement: float = 0.0
    tie_handling: str = "drop"  # drop | keep
    deduplicate: bool = False
    eval_fraction: float = 0.1

    def validate(self) -> None:
        for i, s in enumerate(self.sources):
            if s not in domain.SOURCES:
                raise InvalidArgument(f"filter.sources[{i}]", "must be a PROMPT_SOURCE_* value")
        if self.tie_handling not in ("drop", "keep"):
            raise InvalidArgument("filter.tie_handling", "must be a TIE_HANDLING_* value")
        if self.start and self.end and self.start >= self.end:
            raise InvalidArgument("filter.start_time", "must be before filter.end_time")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InvalidArgument("filter.min_agreement", "must be in [0, 1]")
        if not 0.0 < self.eval_fraction <= 0.5:
            raise InvalidArgument("filter.eval_fraction", "must be in (0, 0.5]")

    def normalised(self) -> Filter:
        """The same selection with its sources sorted and each named once."""
        return replace(self, sources=tuple(sorted(set(self.sources))))

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = self.start.isoformat() if self.start else None
        d["end"] = self.end.isoformat() if self.end else None
        d["sources"] = sorted(self.sources)
        return d


@dataclass
class Built:
    records: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))

    def count(self, kind: str, split: str) -> int:
        return len(self.records.get((kind, split), []))


def split_of(prompt_sha: str, eval_fraction: float) -> str:
    bucket = int(hashlib.sha256(f"split:{prompt_sha}".encode()).hexdigest()[:8], 16) / 2**32
    return EVAL if bucket < eval_fraction else TRAIN


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _in_window(at: datetime, f: Filter) -> bool:
    at = _utc(at)
    return (f.start is None or at >= f.start) and (f.end is None or at < f.end)


def _batch_agreement(session: Session) -> dict[str, float | None]:
    """Krippendorff's alpha per task batch (raw agreement where alpha is undefined)."""
    from clinalign.preference.queue import batch_labels

    batches = session.execute(select(TaskRow.id, TaskRow.batch_id)).all()
    by_batch: dict[str, list[Label]] = defaultdict(list)
    task_batch = dict(batches)
    for task_id, annotator, value in batch_labels(session, ""):
        by_batch[task_batch[task_id]].append(Label(task_id, annotator, value))
    out: dict[str, float | None] = {}
    for batch, labels in by_batch.items():
        report = agreement_report(labels)
        out[batch] = (
            report.krippendorff_alpha
            if report.krippendorff_alpha is not None
            else report.raw_agreement
        )
    return out


class _Pair(NamedTuple):
    """One preference pair of one label: a comparison, or one ordered pair of a ranking."""

    prompt_id: str
    chosen: str
    rejected: str
    tie: bool
    strength: float
    label: ComparisonRow | RankingRow


# (sort key, split, canonical record): records are stored in sort-key order.
_Row = tuple[tuple[str, ...], str, str]


def build(session: Session, f: Filter) -> Built:
    prompts = {
        p.id: p
        for p in session.scalars(select(PromptRow))
        if not f.sources or p.source in f.sources
    }
    responses = {r.id: r for r in session.scalars(select(ResponseRow))}
    pairs = _pairs(session, f, prompts, _admission(session, f))
    built = Built()
    for _, split, line in sorted(_preference_rows(session, f, pairs, prompts, responses)):
        built.records[(PREFERENCE, split)].append(line)
    for _, split, line in sorted(_sft_rows(session, f, prompts, responses)):
        built.records[(SFT, split)].append(line)
    for _, split, line in sorted(_harm_rows(session, f, prompts, responses)):
        built.records[(HARM, split)].append(line)
    return built


def _admission(session: Session, f: Filter) -> Callable[[str | None], bool]:
    """Whether a label of this task passes ``f.min_agreement``. Agreement is known only for
    labels collected through the queue; direct submissions and corrections carry no batch
    and are always admitted."""
    if f.min_agreement <= 0:
        return lambda task_id: True
    task_batch = dict(session.execute(select(TaskRow.id, TaskRow.batch_id)).all())
    agreement = _batch_agreement(session)

    def admitted(task_id: str | None) -> bool:
        if not task_id:
            return True
        score = agreement.get(task_batch.get(task_id, ""))
        return score is not None and score >= f.min_agreement

    return admitted


def _pairs(
    session: Session,
    f: Filter,
    prompts: dict[str, PromptRow],
    admitted: Callable[[str | None], bool],
) -> list[_Pair]:
    """The pairs of the comparisons and rankings the filter selects, in label-id order."""

    def selected(label: ComparisonRow | RankingRow) -> bool:
        return (
            label.prompt_id in prompts
            and _in_window(label.created_at, f)
            and admitted(label.task_id)
        )

    pairs: list[_Pair] = []
    for c in session.scalars(select(ComparisonRow).order_by(ComparisonRow.id)):
        if not selected(c) or (c.preference == "tie" and f.tie_handling == "drop"):
            continue
        chosen, rejected = (
            (c.response_b_id, c.response_a_id)
            if c.preference == "b"
            else (c.response_a_id, c.response_b_id)
        )
        pairs.append(_Pair(c.prompt_id, chosen, rejected, c.preference == "tie", c.strength, c))
    for k in session.scalars(select(RankingRow).order_by(RankingRow.id)):
        if not selected(k):
            continue
        for i, better in enumerate(k.response_ids):
            for worse in k.response_ids[i + 1 :]:
                pairs.append(_Pair(k.prompt_id, better, worse, False, 1.0, k))
    return pairs


def _preference_rows(
    session: Session,
    f: Filter,
    pairs: list[_Pair],
    prompts: dict[str, PromptRow],
    responses: dict[str, ResponseRow],
) -> list[_Row]:
    errors: dict[str, set[str]] = defaultdict(set)
    for e in session.scalars(select(ErrorAnnotationRow)):
        errors[e.response_id].add(e.category)
    seen: set[tuple[str, str, str]] = set()
    rows: list[_Row] = []
    for pair in pairs:
        p, ch, rj = prompts[pair.prompt_id], responses[pair.chosen], responses[pair.rejected]
        if f.deduplicate:
            key = (
                p.text_sha256,
                hashlib.sha256(ch.text.encode()).hexdigest(),
                hashlib.sha256(rj.text.encode()).hexdigest(),
            )
            if key in seen:
                continue
            seen.add(key)
        rows.append(_preference(p, ch, rj, pair, sorted(errors.get(rj.id, ())), f))
    return rows


def _preference(
    p: PromptRow,
    ch: ResponseRow,
    rj: ResponseRow,
    pair: _Pair,
    rejected_errors: list[str],
    f: Filter,
) -> _Row:
    label = pair.label
    record = {
        "prompt": p.text,
        "chosen": ch.text,
        "rejected": rj.text,
        "tie": pair.tie,
        "strength": pair.strength,
        "prompt_id": p.id,
        "chosen_id": ch.id,
        "rejected_id": rj.id,
        "label_id": label.id,
        "annotator_id": label.annotator_id,
        "guideline_version": label.guideline_version,
        "source": p.source,
        "tags": sorted(p.tags),
        "rejected_error_categories": rejected_errors,
    }
    split = split_of(p.text_sha256, f.eval_fraction)
    return (split, p.text_sha256, ch.id, rj.id, label.id), split, canonical(record)


def _sft_rows(
    session: Session, f: Filter, prompts: dict[str, PromptRow], responses: dict[str, ResponseRow]
) -> list[_Row]:
    """Clinician corrections, then human-written responses (demonstrations)."""
    rows: list[_Row] = []
    for x in session.scalars(select(CorrectionRow).order_by(CorrectionRow.id)):
        fixed, original = responses[x.corrected_response_id], responses[x.response_id]
        fixed_prompt = prompts.get(original.prompt_id)
        if fixed_prompt is None or not _in_window(x.created_at, f):
            continue
        rows.append(_sft(fixed_prompt, fixed.text, x.id, x.annotator_id, "correction", f))
    for r in responses.values():
        demo_prompt = prompts.get(r.prompt_id)
        if demo_prompt is None or r.model_version or not _in_window(r.created_at, f):
            continue  # model-written, or a correction (model_version "human:...") above
        rows.append(_sft(demo_prompt, r.text, r.id, r.created_by, "demonstration", f))
    return rows


def _sft(p: PromptRow, completion: str, ref: str, author: str, origin: str, f: Filter) -> _Row:
    split = split_of(p.text_sha256, f.eval_fraction)
    record = {
        "prompt": p.text,
        "completion": completion,
        "prompt_id": p.id,
        "ref_id": ref,
        "author": author,
        "origin": origin,
        "source": p.source,
        "tags": sorted(p.tags),
    }
    return (split, p.text_sha256, ref), split, canonical(record)


def _harm_rows(
    session: Session, f: Filter, prompts: dict[str, PromptRow], responses: dict[str, ResponseRow]
) -> list[_Row]:
    """One record per model-written response that a label in the window judged, with the
    categories annotated on it and their highest severity."""
    judged: set[str] = set()
    annotations: dict[str, list[ErrorAnnotationRow]] = defaultdict(list)

    def labelled(label: Any, *response_ids: str) -> None:
        if _in_window(label.created_at, f):
            judged.update(response_ids)

    for c in session.scalars(select(ComparisonRow)):
        labelled(c, c.response_a_id, c.response_b_id)
    for k in session.scalars(select(RankingRow)):
        labelled(k, *k.response_ids)
    for rating in session.scalars(select(RatingRow)):
        labelled(rating, rating.response_id)
    for x in session.scalars(select(CorrectionRow)):
        labelled(x, x.response_id)
    for e in session.scalars(select(ErrorAnnotationRow)):
        if _in_window(e.created_at, f):
            judged.add(e.response_id)
            annotations[e.response_id].append(e)
    rows: list[_Row] = []
    for rid in judged:
        r = responses[rid]
        p = prompts.get(r.prompt_id)
        if p is None or not r.model_version or r.model_version.startswith("human:"):
            continue  # another source, or written by a person (a demonstration, a correction)
        found = annotations.get(rid, [])
        given = [e.severity for e in found if e.severity]
        record = {
            "prompt": p.text,
            "response": r.text,
            "categories": sorted({e.category for e in found}),
            "severity": max(given, key=domain.SEVERITIES.index) if given else "",
            "annotators": sorted({e.annotator_id for e in found}),
            "prompt_id": p.id,
            "response_id": r.id,
            "model_version": r.model_version,
            "source": p.source,
            "tags": sorted(p.tags),
        }
        split = split_of(p.text_sha256, f.eval_fraction)
        rows.append(((split, p.text_sha256, r.id), split, canonical(record)))
    return rows


def content_hash(built: Built) -> str:
    digest = hashlib.sha256(f"clinalign-snapshot-v{SCHEMA_VERSION}\n".encode())
    for kind in KINDS:
        for split in (TRAIN, EVAL):
            for line in built.records.get((kind, split), []):
                digest.update(f"{kind}\t{split}\t{line}\n".encode())
    return digest.hexdigest()


def create(session: Session, principal: str, f: Filter) -> tuple[SnapshotRow, bool]:
    """Returns (snapshot, created); an identical existing snapshot is returned as is."""
    f.validate()
    built = build(session, f)
    digest = content_hash(built)
    existing = session.scalar(select(SnapshotRow).where(SnapshotRow.content_hash == digest))
    if existing is not None:
        return existing, False
    sid = f"snap-{digest[:16]}"
    counts = {f"{k}_{s}": built.count(k, s) for k in KINDS for s in (TRAIN, EVAL)}
    head = audit.append(session, principal, "create_snapshot", sid)
    manifest = {
        "id": sid,
        "content_hash": digest,
        "schema_version": SCHEMA_VERSION,
        "filter": f.as_json(),
        "counts": counts,
        "code_version": __version__,
        "split": {
            "method": "sha256('split:' + prompt_sha256) < eval_fraction",
            "eval_fraction": f.eval_fraction,
        },
        "formats": {
            PREFERENCE: ["prompt", "chosen", "rejected"],
            SFT: ["prompt", "completion"],
            HARM: ["prompt", "response", "categories", "severity"],
        },
        # Anchors the audit chain: a later truncation of the log below this entry shows.
        "audit_entry": {"sequence": head.seq, "hash": head.entry_hash},
    }
    row = SnapshotRow(
        id=sid,
        content_hash=digest,
        filter=f.as_json(),
        manifest=manifest,
        train_pairs=counts["preference_train"],
        eval_pairs=counts["preference_eval"],
        sft_records=counts["sft_train"] + counts["sft_eval"],
        created_by=principal,
        created_at=domain.now(),
    )
    session.add(row)
    session.flush()
    values = [
        {"snapshot_id": sid, "kind": kind, "split": split, "seq": seq, "record": line}
        for (kind, split), lines in sorted(built.records.items())
        for seq, line in enumerate(lines)
    ]
    for start in range(0, len(values), 5000):
        session.execute(insert(SnapshotRecordRow), values[start : start + 5000])
    return row, True


def get(session: Session, ident: str) -> SnapshotRow:
    row = session.get(SnapshotRow, ident) or session.scalar(
        select(SnapshotRow).where(SnapshotRow.content_hash == ident)
    )
    if row is None:
        raise NotFound("snapshot", ident, field="id")
    return row


def page(session: Session, limit: int, offset: int) -> list[SnapshotRow]:
    return list(
        session.scalars(
            select(SnapshotRow)
            .order_by(SnapshotRow.created_at.desc(), SnapshotRow.id)
            .limit(limit)
            .offset(offset)
        )
    )


def records(session: Session, sid: str, kind: str, split: str | None) -> list[tuple[str, str]]:
    """(split, canonical record) in canonical order."""
    query = select(SnapshotRecordRow.split, SnapshotRecordRow.record).where(
        SnapshotRecordRow.snapshot_id == sid, SnapshotRecordRow.kind == kind
    )
    if split:
        query = query.where(SnapshotRecordRow.split == split)
    rows = session.execute(
        query.order_by(SnapshotRecordRow.split.desc(), SnapshotRecordRow.seq)
    ).all()
    return [(s, r) for s, r in rows]


def render_jsonl(rows: list[tuple[str, str]], with_split: bool) -> bytes:
    if not with_split:
        return "".join(r + "\n" for _, r in rows).encode()
    # Canonical records are JSON objects: the split column is spliced in as the first key.
    return "".join('{"split":"' + s + '",' + r[1:] + "\n" for s, r in rows).encode()


def render_parquet(rows: list[tuple[str, str]], with_split: bool) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_rows = []
    for s, r in rows:
        rec = json.loads(r)
        if with_split:
            rec["split"] = s
        table_rows.append(rec)
    table = pa.Table.from_pylist(table_rows)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]
    if not data:
        yield b""
