"""The embedded foundation model: corpus, prompt format, tokenizer, tiny build, bootstrap."""

from __future__ import annotations

import itertools
import math
import re

import pytest

from clinalign.foundation import (
    EOS_TOKEN,
    format_document,
    format_prompt,
    generate_corpus,
    is_heldout_phrasing,
    iter_qa_examples,
    iter_qa_pairs,
)
from clinalign.foundation.pretrain import lr_at, pack_blocks, replan
from clinalign.foundation.vocab import load_vocabulary

SMALL = 60_000  # bytes: enough documents of every kind, fast to generate


# -- prompt format ------------------------------------------------------------------------


def test_format_prompt_is_the_documented_layout() -> None:
    assert format_prompt("Q?") == "<|user|>\nQ?\n<|assistant|>\n"
    assert format_document("Q?", "A.") == "<|user|>\nQ?\n<|assistant|>\nA.</s>"


# -- corpus -------------------------------------------------------------------------------


def test_corpus_is_deterministic_for_a_seed() -> None:
    first, again = generate_corpus(0, SMALL), generate_corpus(0, SMALL)
    assert first.text == again.text
    assert first.sha256 == again.sha256
    assert generate_corpus(1, SMALL).sha256 != first.sha256


def test_corpus_reaches_target_size_and_covers_every_kind() -> None:
    corpus = generate_corpus(0, SMALL)
    assert SMALL <= corpus.num_bytes < SMALL + 5_000
    assert set(corpus.kind_counts()) == {
        "symptom",
        "escalation",
        "triage",
        "medication",
        "follow_up",
        "discharge",
        "leaflet",
        "info",
        "note",
    }
    assert all(doc.endswith(EOS_TOKEN) and doc.count(EOS_TOKEN) == 1 for doc in corpus.documents)


def test_chat_documents_follow_the_prompt_format() -> None:
    corpus = generate_corpus(0, SMALL)
    chat = [d for d, k in zip(corpus.documents, corpus.kinds, strict=True) if k == "symptom"]
    pattern = re.compile(r"<\|user\|>\n[^\n<]+\n<\|assistant\|>\n[^<]+</s>", re.DOTALL)
    assert chat and all(pattern.fullmatch(doc) for doc in chat)


def test_corpus_text_is_filled_and_synthetic() -> None:
    text = generate_corpus(3, 200_000).text
    # Every template slot was filled and no missing value leaked through.
    assert "{" not in text and "}" not in text and "None" not in text
    # Nothing that looks like real-world identifiers or contact details.
    assert not re.search(r"[\w.]+@[\w.]+\.\w+", text), "e-mail address"
    assert not re.search(r"https?://|www\.", text), "URL"
    assert not re.search(r"\b\d{3}[ -]?\d{3}[ -]?\d{4}\b", text), "phone/record number"
    assert not re.search(r"\b(?:Mr|Mrs|Ms|Miss|Dr)\.? [A-Z][a-z]+", text), "titled name"
    assert not re.search(r"\b(?:19|20)\d\d-\d\d-\d\d\b", text), "calendar date"


def test_doses_carry_units() -> None:
    for med in load_vocabulary().medications.values():
        if med.kind in ("tablets", "capsules"):
            assert re.search(r"\d[\d,.]* ?(?:mg|g|micrograms|units)\b", med.dose), med.key


def test_heldout_split_uses_only_every_fifth_phrasing() -> None:
    train = list(itertools.islice(iter_qa_examples(0, "train"), 200))
    heldout = list(itertools.islice(iter_qa_examples(0, "heldout"), 200))
    assert not any(is_heldout_phrasing(e.phrasing) for e in train)
    assert all(is_heldout_phrasing(e.phrasing) for e in heldout)
    assert {e.kind for e in heldout} == {
        "symptom",
        "escalation",
        "triage",
        "medication",
        "follow_up",
    }
    assert {e.question for e in train}.isdisjoint({e.question for e in heldout})


def test_qa_pairs_are_seeded() -> None:
    def take(seed: int) -> list[tuple[str, str]]:
        return list(itertools.islice(iter_qa_pairs(seed), 20))

    assert take(0) == take(0)
    assert take(0) != take(1)
    with pytest.raises(ValueError, match="split must be 'train' or 'heldout'"):
        next(iter_qa_pairs(0, split="test"))
    with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
        next(iter_qa_pairs(0, kinds=["poetry"]))


# -- training pieces ----------------------------------------------------------------------


def test_lr_schedule_warms_up_then_decays_to_floor() -> None:
    assert lr_at(0, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.1) == pytest.approx(0.55)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_pack_blocks_concatenates_and_drops_the_tail() -> None:
    blocks = pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8]], 3)
    assert blocks.tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(ValueError, match="fewer than one 8-token block"):
        pack_blocks([[1, 2]], 8)


# -- the tiny model -----------------------------------------------------------------------


def test_replan_keeps_the_plan_under_a_step_budget_only() -> None:
    # bench/demo_seeds.py builds with time_budget_s=inf so that a seed reproduces anywhere
    assert replan(step=10, planned=1600, seconds_per_step=0.2, seconds_left=math.inf) == 1600


def test_replan_cuts_the_plan_to_the_time_left_with_a_margin() -> None:
    # 0.95 x 10 s / 0.5 s = 19 more steps after step 100
    assert replan(step=100, planned=1600, seconds_per_step=0.5, seconds_left=10.0) == 119
    assert replan(step=100, planned=110, seconds_per_step=0.5, seconds_left=10.0) == 110
    assert replan(step=100, planned=1600, seconds_per_step=0.5, seconds_left=0.0) == 101
