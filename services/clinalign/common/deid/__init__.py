"""De-identification of free clinical text before ClinAlign stores it anywhere.

Prompts, responses, comments, corrections and production outputs pass through
:class:`Deidentifier` at ingress (preference store, monitor); ``clinalign deid`` runs the
same code on stdin so it can be audited alone.

    settings = DeidSettings()              # parsed once by the caller at start-up
    deid = Deidentifier(settings)          # build once, share; redact() is stateless
    result = deid.redact("Seen by Dr. Okafor on 03/14/2024, MRN 00123456.")
    result.text   # 'Seen by Dr. [NAME] on [DATE], MRN [MRN].'
    result.spans  # (Span(start=12, end=18, entity_type="NAME", score=0.85), ...)

Design
------
It covers the HIPAA Safe Harbor identifiers that occur in clinical text (see
``entities.EntityType``) and keeps clinical content: drugs, doses, vitals, lab values,
durations, years alone and ages up to 89.

It is built on Microsoft Presidio without an NLP model. Presidio's ``AnalyzerEngine``
runs under its ``NoOpNlpEngine`` (no spaCy model, nothing downloaded) with two
recognizers of ours in its ``RecognizerRegistry``; Presidio anonymizer operators then
replace what was found: ``Replace`` for typed placeholders, our ``HmacPseudonym``
operator for consistent pseudonyms. Presidio's own pattern recognizers are not used: on
the evaluation notes they are about seven times slower than ours (``bench/deid.py``) and
find under a third of the identifiers (no names, MRNs or most clinical date formats).

Speed comes from how the two recognizers scan, not from skipping Presidio:

- ``ClinicalIdentifierRecognizer`` joins every identifier rule (``patterns.RULES``, each
  a Presidio ``Pattern`` plus its entity type, value groups and possible first
  characters) into ONE compiled ``re`` alternation (``scanner``), so a text is scanned
  once rather than once per pattern, and each position tries only the rules that can
  start with its character. Cue words ("MRN:", "member ID") are matched but kept out of
  the span. The e-mail rule, costly at every word start, runs only where there is an "@".
- ``PersonNameRecognizer`` finds names from cues (titles, credentials, relations, field
  labels, salutations, reporting verbs) in one more regex, then checks each capitalised
  word once against the names already found in the text and small gazetteers of given
  names and surnames (``names``).
- Presidio's lemma context enhancer is replaced by a no-op: without NLP tokens it has
  nothing to add, and the rules carry their context themselves.
- The operators are applied in one pass over the spans rather than through Presidio's
  ``AnonymizerEngine``, which rebuilds the whole text once per span.

All of it stays linear in the text length; adversarial inputs (long runs of names,
dots before an "@") were checked for that.

Overlapping findings are merged into one span typed by the most confident finding
(``engine.resolve``), so spans are sorted, disjoint and in original-text offsets.

Quality is measured on ``data/eval_notes.jsonl``, synthetic notes generated with exact
labels by ``make_eval_set``; ``evaluation.evaluate`` reports per-type recall and
precision. The notes are templated and were written by the same hands as the detector,
so their figures are an upper bound on real text, not an estimate of it.
"""

from collections.abc import Callable

from clinalign.common.deid.engine import Deidentifier
from clinalign.common.deid.entities import ENTITY_TYPES, DeidResult, EntityType, Span
from clinalign.common.deid.evaluation import (
    EvalNote,
    EvalReport,
    GoldSpan,
    TypeScore,
    evaluate,
    load_eval_notes,
)
from clinalign.common.deid.settings import DeidSettings


def build_redactor(settings: DeidSettings | None = None) -> Callable[[str], str]:
    """``text -> de-identified text`` with one shared :class:`Deidentifier`: what the
    preference store and the monitor call at ingress. Settings default to CLINALIGN_DEID_*."""
    deid = Deidentifier(settings or DeidSettings())
    return lambda text: deid.redact(text).text


__all__ = [
    "ENTITY_TYPES",
    "DeidResult",
    "DeidSettings",
    "Deidentifier",
    "EntityType",
    "EvalNote",
    "EvalReport",
    "GoldSpan",
    "Span",
    "TypeScore",
    "build_redactor",
    "evaluate",
    "load_eval_notes",
]
