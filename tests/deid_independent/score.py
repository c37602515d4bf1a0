"""Scores a de-identifier on the independent set: recall per Safe Harbor category and
precision (``clinalign.common.deid.evaluation``'s overlap rules), and the share of
clinical terms kept (no redacted span touches them).

    .venv/bin/python -m tests.deid_independent.score     # prints a table, then JSON
"""

from __future__ import annotations

import json
import re
from typing import Any

from clinalign.common.deid import Deidentifier, DeidSettings
from clinalign.common.deid.evaluation import EvalNote, GoldSpan, Redactor, evaluate
from tests.deid_independent.generator import OUT

# The generator labels "Dr. Howard" and "Oscar Dunlap MD" whole; a title or a credential
# is not an identifier and the detector (like the shipped set) leaves it, so a gold name
# span starts after its title and ends before its credential.
_TITLE = re.compile(r"(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+")
_CREDENTIAL = re.compile(r"\s+(?:MD|DDS|DVM|PhD|RN|NP|PA|DO)$")


def load() -> list[dict[str, Any]]:
    return [json.loads(line) for line in OUT.read_text().splitlines()]


def _gold(record: dict[str, Any]) -> tuple[GoldSpan, ...]:
    spans = []
    for s in record["spans"]:
        start, end = s["start"], s["end"]
        if s["type"] == "NAME":
            title = _TITLE.match(record["text"], start, end)
            start = title.end() if title else start
            credential = _CREDENTIAL.search(record["text"], start, end)
            end = credential.start() if credential else end
        spans.append(GoldSpan(start, end, s["type"]))
    return tuple(spans)


def score(deidentifier: Redactor) -> dict[str, Any]:
    records = load()
    notes = [EvalNote(r["id"], r["text"], _gold(r)) for r in records]
    report = evaluate(deidentifier, notes)
    kept = total = 0
    for r in records:
        spans = deidentifier.redact(r["text"]).spans
        for k in r["keep"]:
            total += 1
            kept += not any(s.start < k["end"] and k["start"] < s.end for s in spans)
    return {
        "recall_by_category": {
            t: round(s.recall, 4) for t, s in sorted(report.per_type.items()) if s.gold
        },
        "precision_by_type": {
            t: round(s.precision, 4) for t, s in sorted(report.per_type.items()) if s.predicted
        },
        "recall": round(report.overall.recall, 4),
        "precision": round(report.overall.precision, 4),
        "clinical_terms_kept": round(kept / total, 4) if total else None,
        "notes": len(records),
    }


def main() -> None:
    result = score(Deidentifier(DeidSettings()))
    for category, recall in result["recall_by_category"].items():
        print(f"{category:<12} recall {recall:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
