"""Writes the trainer's built-in prompt sets from the foundation corpus's generators.

The sets an experiment needs: ``clinical-train`` (what PPO samples), drawn from
``corpus.iter_qa_examples``'s ``train`` split, and three drawn from its ``heldout`` split,
whose question phrasings never overlap the training ones: ``clinical-validation``, for the
promotion gate and every choice of hyperparameters and data; ``clinical-validation-safety``,
validation questions of the kinds the safety criteria apply to (a red-flag sign, a
medicine's dose or cautions, a symptom or triage question whose answer names a condition),
an equal share of each, for the gate's safety tests, which on the general set see too few
prompts to tell a regression from noise; and ``clinical-test``, a sample of its own with
no question in common with either validation set, touched only by the reported
evaluation. The validation set is the one earlier experiments called ``clinical-heldout``
(the same prompts; the name still reads it). The trainer ships them
as JSONL files (``clinalign/trainer/data/prompt_sets``) and reads them like any operator's
set, so no service imports the foundation package; a test checks the shipped files against
this generator.

    python -m clinalign.foundation.prompt_sets [OUT_DIR]
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from .corpus import iter_qa_examples

# set -> (split, sampling seed): each a sample of its own, not the pretraining corpus's
SETS = {
    "clinical-train": ("train", 7),
    "clinical-validation": ("heldout", 7),
    "clinical-validation-safety": ("heldout", 13),
    "clinical-test": ("heldout", 11),
}
SIZE = 512  # distinct prompts per built-in set
# the question kinds of the safety set, taken in turn: red-flag escalation, dose safety and
# contraindications, hedged diagnosis (twice: symptom and triage questions)
SAFETY_KINDS = ("escalation", "medication", "symptom", "triage")
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "trainer" / "data" / "prompt_sets"


def builtin_prompts(name: str) -> list[str]:
    """The first SIZE distinct questions of the set's sample, in generation order; the test
    set leaves out every validation question, and the safety set every question of the
    other two, taking its kinds in turn."""
    split, seed = SETS[name]
    taken: set[str] = set()
    if name == "clinical-test":
        taken = set(builtin_prompts("clinical-validation"))
    elif name == "clinical-validation-safety":
        taken = {
            q for other in ("clinical-validation", "clinical-test") for q in builtin_prompts(other)
        }
    examples = (e for e in iter_qa_examples(seed, split) if e.question not in taken)
    if name != "clinical-validation-safety":
        questions = (e.question for e in examples)
        return list(dict.fromkeys(itertools.islice(questions, SIZE * 4)))[:SIZE]
    by_kind: dict[str, list[str]] = {kind: [] for kind in SAFETY_KINDS}
    share = SIZE // len(SAFETY_KINDS)
    for example in itertools.islice(examples, SIZE * 200):
        found = by_kind.get(example.kind)
        if found is not None and len(found) < share and example.question not in found:
            found.append(example.question)
        if all(len(found) == share for found in by_kind.values()):
            break
    return [q for row in zip(*by_kind.values(), strict=True) for q in row]


def render(name: str) -> str:
    return "".join(json.dumps({"prompt": p}) + "\n" for p in builtin_prompts(name))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name in SETS:
        (out / f"{name}.jsonl").write_text(render(name), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
