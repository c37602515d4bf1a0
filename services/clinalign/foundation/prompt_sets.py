"""Writes the trainer's built-in prompt sets from the foundation corpus's generators.

``clinical-train`` and ``clinical-heldout`` are synthetic patient questions drawn from
``corpus.iter_qa_examples``'s ``train`` and ``heldout`` splits, whose question phrasings
never overlap, so a policy judged on ``clinical-heldout`` is judged on wording it never
trained on. The trainer ships them as JSONL files (``clinalign/trainer/data/prompt_sets``)
and reads them like any operator's set, so no service imports the foundation package; a
test checks the shipped files against this generator.

    python -m clinalign.foundation.prompt_sets [OUT_DIR]
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from .corpus import iter_qa_examples

SPLITS = {"clinical-train": "train", "clinical-heldout": "heldout"}
SIZE = 512  # distinct prompts per built-in set
SEED = 7  # a sample of its own, not the pretraining corpus's
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "trainer" / "data" / "prompt_sets"


def builtin_prompts(name: str) -> list[str]:
    """The first SIZE distinct questions of the set's split, in generation order."""
    questions = (e.question for e in iter_qa_examples(SEED, SPLITS[name]))
    return list(dict.fromkeys(itertools.islice(questions, SIZE * 4)))[:SIZE]


def render(name: str) -> str:
    return "".join(json.dumps({"prompt": p}) + "\n" for p in builtin_prompts(name))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        (out / f"{name}.jsonl").write_text(render(name), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
