"""The synthetic clinical corpus ClinAlign ships, and the question/answer pairs drawn from it.

Everything is generated from the curated vocabulary in `data/` by a seeded random
stream, so the same seed gives the same bytes (and SHA-256) on every machine. No real
patient data and no names of people appear: patients are "I" or "my father", clinicians
are unnamed.

Document kinds and their share of the pretraining corpus:

* chat documents (`<|user|>\\n{question}\\n<|assistant|>\\n{answer}</s>`): `symptom`
  (questions about symptoms, answered with likely cause, self-care, a medicine with its
  adult dose, red flags and follow-up), `escalation` (a red-flag symptom, answered with
  emergency or same-day escalation), `triage` (how urgently to be seen), `medication`
  (doses, missed doses, side effects, cautions) and `follow_up` (reviews and check-ups);
* plain documents ending in `</s>`: `discharge` instructions, medicine `leaflet`s,
  condition `info` pages and clinician triage `note`s.

Splits: question phrasings are split by `is_heldout_phrasing` (every fifth phrasing of
each kind is held out). `generate_corpus` and `iter_qa_pairs(split="train")` use only
training phrasings; `iter_qa_pairs(split="heldout")` only held-out ones, for evaluation.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from clinalign.common.prompts import format_document

from ._documents import DOCUMENT_KINDS, DocumentRenderer
from ._qa import QA_KINDS, QAExample, QARenderer, is_heldout_phrasing
from .vocab import load_vocabulary

__all__ = [
    "DOCUMENT_KINDS",
    "KIND_WEIGHTS",
    "QA_KINDS",
    "Corpus",
    "QAExample",
    "generate_corpus",
    "generate_documents",
    "is_heldout_phrasing",
    "iter_qa_examples",
    "iter_qa_pairs",
]

# Share of each kind in the pretraining corpus. Symptom questions dominate because they
# are what the platform is asked most; plain documents add register variety. Medication
# questions get extra weight because answering them means copying the medicine's name from
# the question, which a small model learns late: more of them made more dose answers name
# the asked-about medicine (see docs/experiments.md, 2026-11-25).
KIND_WEIGHTS: dict[str, float] = {
    "symptom": 0.30,
    "escalation": 0.12,
    "triage": 0.10,
    "medication": 0.18,
    "follow_up": 0.07,
    "discharge": 0.08,
    "leaflet": 0.05,
    "info": 0.05,
    "note": 0.05,
}


@dataclass(frozen=True)
class Corpus:
    """A generated corpus: documents in order, their concatenation and its digest."""

    documents: tuple[str, ...]
    kinds: tuple[str, ...]  # kind of each document, same order
    seed: int

    @property
    def text(self) -> str:
        """All documents concatenated; each already ends with `</s>`."""
        return "".join(self.documents)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def num_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    def kind_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.kinds).items()))


def _renderers(seed: int, stream: str, split: str) -> dict[str, Callable[[], str | QAExample]]:
    # A string seed is hashed with SHA-512 by `random`, so streams are stable across
    # Python processes and independent of PYTHONHASHSEED.
    rng = random.Random(f"clinalign-corpus:{stream}:{seed}")
    vocab = load_vocabulary()
    qa = QARenderer(vocab, rng, split)
    docs = DocumentRenderer(vocab, rng)
    return {
        "symptom": qa.symptom,
        "escalation": qa.escalation,
        "triage": qa.triage,
        "medication": qa.medication,
        "follow_up": qa.follow_up,
        "discharge": docs.discharge,
        "leaflet": docs.leaflet,
        "info": docs.info,
        "note": docs.note,
    }


def generate_documents(seed: int = 0) -> Iterator[tuple[str, str]]:
    """Endless (kind, document text) pairs of the pretraining corpus, training split only."""
    renderers = _renderers(seed, "pretrain", "train")
    chooser = random.Random(f"clinalign-corpus:kinds:{seed}")
    kinds = list(KIND_WEIGHTS)
    weights = list(KIND_WEIGHTS.values())
    while True:
        kind = chooser.choices(kinds, weights)[0]
        item = renderers[kind]()
        text = format_document(item.question, item.answer) if isinstance(item, QAExample) else item
        yield kind, text


def generate_corpus(seed: int = 0, target_bytes: int = 4_000_000) -> Corpus:
    """Generate documents until the UTF-8 size reaches `target_bytes`.

    Deterministic: the same (seed, target_bytes, data files) always give the same text.
    """
    if target_bytes <= 0:
        raise ValueError(f"target_bytes must be positive, got {target_bytes}")
    documents: list[str] = []
    kinds: list[str] = []
    size = 0
    for kind, text in generate_documents(seed):
        documents.append(text)
        kinds.append(kind)
        size += len(text.encode("utf-8"))
        if size >= target_bytes:
            break
    return Corpus(tuple(documents), tuple(kinds), seed)


def iter_qa_examples(
    seed: int = 0, split: str = "train", kinds: Sequence[str] = QA_KINDS
) -> Iterator[QAExample]:
    """Endless question/answer examples with metadata, cycling through `kinds`.

    `split` is "train" or "heldout" (see `is_heldout_phrasing`). The stream is separate
    from the pretraining corpus's, so seed 0 here does not replay the corpus documents;
    use a different seed for a different sample. Use `itertools.islice` to take some.
    """
    unknown = [k for k in kinds if k not in QA_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {QA_KINDS}, got {list(kinds)}")
    renderers = _renderers(seed, f"qa-{split}", split)
    for kind in itertools.cycle(kinds):
        example = renderers[kind]()
        assert isinstance(example, QAExample)
        yield example


def iter_qa_pairs(
    seed: int = 0, split: str = "train", kinds: Sequence[str] = QA_KINDS
) -> Iterator[tuple[str, str]]:
    """Endless (question, answer) pairs; see `iter_qa_examples`."""
    for example in iter_qa_examples(seed, split, kinds):
        yield example.question, example.answer
