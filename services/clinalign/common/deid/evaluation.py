"""Recall and precision of a de-identifier on labelled notes.

Matching is by character overlap and ignores the type a detector gave, because for
de-identification a leak is a leak whatever the label, and an identifier redacted under
another label is no loss of privacy:

- a gold span counts as **found** when every letter and digit in it lies inside some
  predicted span (so "14 Mar 2024" with only "Mar 2024" redacted is a miss: the day leaked;
  spaces and punctuation at the edges do not matter);
- a predicted span counts as **correct** when it overlaps at least one gold span.

Recall is reported per gold type and precision per predicted type; overall figures pool
all spans.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Protocol

from clinalign.common.deid.entities import DeidResult


@dataclass(frozen=True)
class GoldSpan:
    start: int
    end: int
    entity_type: str


@dataclass(frozen=True)
class EvalNote:
    id: str
    text: str
    spans: tuple[GoldSpan, ...]


class Redactor(Protocol):
    def redact(self, text: str) -> DeidResult: ...


@dataclass
class TypeScore:
    """Counts for one type: gold spans and how many were found; predicted spans and how
    many were correct."""

    gold: int = 0
    found: int = 0
    predicted: int = 0
    correct: int = 0

    @property
    def recall(self) -> float:
        return self.found / self.gold if self.gold else 1.0

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 1.0


@dataclass
class EvalReport:
    per_type: dict[str, TypeScore] = field(default_factory=dict)
    overall: TypeScore = field(default_factory=TypeScore)
    # Missed gold spans and wrong predictions as (note id, type, text): for debugging the
    # detector on SYNTHETIC notes only; never log these for real text.
    misses: list[tuple[str, str, str]] = field(default_factory=list)
    false_positives: list[tuple[str, str, str]] = field(default_factory=list)

    def table(self) -> str:
        rows = [f"{'type':<8} {'gold':>5} {'recall':>7} {'pred':>5} {'precision':>9}"]
        for name, s in [*sorted(self.per_type.items()), ("overall", self.overall)]:
            rows.append(
                f"{name:<8} {s.gold:>5} {s.recall:>7.3f} {s.predicted:>5} {s.precision:>9.3f}"
            )
        return "\n".join(rows)


def default_notes_path() -> Path:
    return Path(str(resources.files("clinalign.common.deid").joinpath("data/eval_notes.jsonl")))


def load_eval_notes(path: Path | None = None) -> list[EvalNote]:
    """The labelled notes, by default the shipped synthetic set."""
    notes = []
    with (path or default_notes_path()).open(encoding="utf-8") as lines:
        for line in lines:
            raw = json.loads(line)
            spans = tuple(GoldSpan(s["start"], s["end"], s["type"]) for s in raw["spans"])
            notes.append(EvalNote(raw["id"], raw["text"], spans))
    return notes


def evaluate(deidentifier: Redactor, notes: Iterable[EvalNote]) -> EvalReport:
    """Per-type and overall recall and precision of ``deidentifier`` on ``notes``."""
    report = EvalReport()

    def score(entity_type: str) -> TypeScore:
        return report.per_type.setdefault(entity_type, TypeScore())

    for note in notes:
        text = note.text
        predicted = deidentifier.redact(text).spans
        covered = bytearray(len(text))
        for p in predicted:
            covered[p.start : p.end] = b"\x01" * (p.end - p.start)
        is_gold = bytearray(len(text))
        for g in note.spans:
            is_gold[g.start : g.end] = b"\x01" * (g.end - g.start)
            found = all(covered[i] for i in range(g.start, g.end) if text[i].isalnum())
            for s in (score(g.entity_type), report.overall):
                s.gold += 1
                s.found += found
            if not found:
                report.misses.append((note.id, g.entity_type, text[g.start : g.end]))
        for p in predicted:
            correct = any(is_gold[p.start : p.end])
            for s in (score(p.entity_type), report.overall):
                s.predicted += 1
                s.correct += correct
            if not correct:
                report.false_positives.append((note.id, p.entity_type, text[p.start : p.end]))
    return report
