"""Writes the trainer's built-in prompt sets from the foundation corpus's generators.

Three sets, as an experiment needs them: ``clinical-train`` (what PPO samples), drawn from
``corpus.iter_qa_examples``'s ``train`` split, and two drawn from its ``heldout`` split,
whose question phrasings never overlap the training ones: ``clinical-validation``, for the
promotion gate and every choice of hyperparameters and data, and ``clinical-test``, a
sample of its own with no question in common with the validation set, touched only by the
reported evaluation. The validation set is the one earlier experiments called
``clinical-heldout`` (the same prompts; the name still reads it). The trainer ships them
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
    "clinical-test": ("heldout", 11),
}
SIZE = 512  # distinct prompts per built-in set
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "trainer" / "data" / "prompt_sets"


def builtin_prompts(name: str) -> list[str]:
    """The first SIZE distinct questions of the set's sample, in generation order; the test
    set leaves out every validation question."""
    split, seed = SETS[name]
    taken = set(builtin_prompts("clinical-validation")) if name == "clinical-test" else set()
    questions = (e.question for e in iter_qa_examples(seed, split) if e.question not in taken)
    return list(dict.fromkeys(itertools.islice(questions, SIZE * 4)))[:SIZE]


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
