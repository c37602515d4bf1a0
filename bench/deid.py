"""De-identification throughput: ClinAlign's ``Deidentifier`` against plain Presidio.

Both run in this one process, pinned to one CPU core with every thread pool set to one
thread, over the shipped synthetic evaluation notes, in alternating rounds; each figure
is the median round. Plain Presidio is ``AnalyzerEngine`` with its predefined pattern
recognizers and no NLP model (``NoOpNlpEngine``) plus ``AnonymizerEngine`` with its
default operator. KB is 1,000 bytes of UTF-8 text. Recall and precision are ClinAlign's on
the same notes (see ``clinalign.common.deid.evaluation``) and, under ``independent``, on
the independent set (``tests/deid_independent``: its own generator, frozen before any
tuning), per Safe Harbor category with the share of clinical terms kept. The last line
is JSON.

    python bench/deid.py [--rounds 5]
"""

from __future__ import annotations

import os

# Before numpy or spaCy load: one thread everywhere, so the comparison is one core each.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import tldextract  # noqa: E402
from presidio_analyzer import AnalyzerEngine  # noqa: E402
from presidio_analyzer.nlp_engine import NoOpNlpEngine  # noqa: E402
from presidio_analyzer.predefined_recognizers import EmailRecognizer  # noqa: E402
from presidio_anonymizer import AnonymizerEngine  # noqa: E402

from clinalign.common.deid import (  # noqa: E402
    Deidentifier,
    DeidResult,
    DeidSettings,
    Span,
    evaluate,
    load_eval_notes,
)

# The bundled public-suffix snapshot: the default extractor downloads the list first.
_OFFLINE_TLDS = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, validating domains against the bundled suffix list."""

    def validate_result(self, pattern_text: str) -> bool:
        return _OFFLINE_TLDS(pattern_text).fqdn != ""


class PlainPresidio:
    """Presidio as it comes, without an NLP model; ``redact`` mirrors ``Deidentifier``."""

    def __init__(self) -> None:
        nlp_engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "no_op"}])
        self.analyzer = AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=["en"])
        self.analyzer.registry.remove_recognizer("EmailRecognizer")
        self.analyzer.registry.add_recognizer(OfflineEmailRecognizer())
        self.anonymizer = AnonymizerEngine()

    def redact(self, text: str) -> DeidResult:
        results = self.analyzer.analyze(text, language="en")
        # Presidio's documented usage: analyzer results go straight to the anonymizer.
        redacted = self.anonymizer.anonymize(text, results).text  # type: ignore[arg-type]
        return DeidResult(redacted, tuple(Span(r.start, r.end, "ID", r.score) for r in results))


def _pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "unpinned (no sched_setaffinity)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"core {core}"


def _seconds(redact: Callable[[str], object], texts: list[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        redact(text)
    return time.perf_counter() - start


def _independent_scores(ours: Deidentifier) -> dict[str, object]:
    """The independent set's figures (its scorer lives beside its generator under tests/,
    which this script's directory does not put on sys.path)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.deid_independent.score import score

    return score(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    pinned = _pin_to_one_core()
    notes = load_eval_notes()
    texts = [n.text for n in notes]
    kb = sum(len(t.encode()) for t in texts) / 1000

    ours = Deidentifier(DeidSettings(mode="placeholder"))
    presidio = PlainPresidio()
    for engine in (ours, presidio):  # warm-up: lazy loads, regex caches
        _seconds(engine.redact, texts[:20])

    ours_s, presidio_s = [], []
    for _ in range(args.rounds):
        ours_s.append(_seconds(ours.redact, texts))
        presidio_s.append(_seconds(presidio.redact, texts))
    kb_per_s = kb / statistics.median(ours_s)
    presidio_kb_per_s = kb / statistics.median(presidio_s)

    report = evaluate(ours, notes)
    baseline = evaluate(presidio, notes).overall
    # The independent set (tests/deid_independent: written apart from the detector,
    # frozen before tuning): recall per Safe Harbor category, clinical terms kept.
    independent = _independent_scores(ours)
    print(report.table())
    print(
        f"{len(notes)} notes, {kb:.0f} KB, {args.rounds} rounds, {pinned}; plain Presidio on "
        f"the same notes: recall {baseline.recall:.3f}, precision {baseline.precision:.3f}"
    )
    print(
        json.dumps(
            {
                "name": "deid",
                "kb_per_s": round(kb_per_s, 1),
                "presidio_kb_per_s": round(presidio_kb_per_s, 1),
                "ratio": round(kb_per_s / presidio_kb_per_s, 2),
                "recall": round(report.overall.recall, 4),
                "precision": round(report.overall.precision, 4),
                "independent": independent,
            }
        )
    )


if __name__ == "__main__":
    main()
