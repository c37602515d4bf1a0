"""Named prompt sets: the built-in synthetic sets and operator-supplied JSONL files."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinalign.common.errors import InvalidArgument
from clinalign.foundation import prompt_sets as generator
from clinalign.trainer import prompt_sets


def test_builtin_sets_are_fixed_distinct_and_disjoint() -> None:
    train = prompt_sets.load("clinical-train")
    validation = prompt_sets.load("clinical-validation")
    safety = prompt_sets.load("clinical-validation-safety")
    test = prompt_sets.load("clinical-test")
    assert len(train) == len(validation) == len(safety) == len(test) == generator.SIZE
    for prompts in (train, validation, safety, test):
        assert len(set(prompts)) == len(prompts)
    for held_out in (validation, safety, test):
        assert not set(train) & set(held_out)  # the gate judges on wording PPO never saw
    assert not set(validation) & set(test)  # the reported figures were not chosen by
    assert not set(safety) & (set(validation) | set(test))
    assert prompt_sets.load("clinical-train") == train  # the same order every time
    assert prompt_sets.load("clinical-validation", limit=5) == validation[:5]
    # the validation set's earlier name still reads it
    assert prompt_sets.load("clinical-heldout") == validation
    prompt_sets.check("clinical-heldout")


def test_the_safety_set_takes_the_safety_criteria_kinds_in_equal_shares() -> None:
    from collections import Counter
    from itertools import islice

    from clinalign.foundation.corpus import iter_qa_examples

    kind = {
        e.question: e.kind for e in islice(iter_qa_examples(13, "heldout"), generator.SIZE * 200)
    }
    safety = prompt_sets.load("clinical-validation-safety")
    assert [kind[q] for q in safety[:4]] == list(generator.SAFETY_KINDS)
    assert Counter(kind[q] for q in safety) == dict.fromkeys(generator.SAFETY_KINDS, 128)


def test_shipped_builtin_sets_are_what_the_foundation_corpus_generates() -> None:
    for name in prompt_sets.BUILTIN:
        shipped = (prompt_sets.BUILTIN_DIR / f"{name}.jsonl").read_text(encoding="utf-8")
        assert shipped == generator.render(name), (
            f"{name} is stale: run python -m clinalign.foundation.prompt_sets"
        )


def test_jsonl_sets_are_read_deduplicated_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "ward.jsonl"
    good.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": "a"}\n')
    prompt_sets.check(str(good))
    assert prompt_sets.load(str(good)) == ["a", "b"]
    cases = {
        "nursing": "is neither a built-in prompt set",
        str(tmp_path / "missing.jsonl"): "is not a file the trainer can read",
    }
    for name, lines in {
        "not-json.jsonl": '{"prompt": "a"}\nnot json\n',
        "no-prompt.jsonl": '{"question": "a"}\n',
        "empty-prompt.jsonl": '{"prompt": "  "}\n',
        "empty.jsonl": "\n",
    }.items():
        (tmp_path / name).write_text(lines)
        cases[str(tmp_path / name)] = {
            "not-json.jsonl": "line 2 of",
            "no-prompt.jsonl": "line 1 of",
            "empty-prompt.jsonl": 'has no "prompt" string',
            "empty.jsonl": "holds no prompts",
        }[name]
    for name, message in cases.items():
        with pytest.raises(InvalidArgument) as info:
            prompt_sets.check(name, "spec.prompt_set")
        assert info.value.field == "spec.prompt_set"
        assert message in info.value.message, (name, info.value.message)
