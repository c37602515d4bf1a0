"""Writes services/clinalign/demo/data/demonstrations.jsonl: the clinical demonstrations
the demo fine-tunes the foundation model on (`clinalign demo`, step 1).

They are synthetic: question/answer examples from the foundation corpus's generators
(`clinalign.foundation.corpus.iter_qa_examples`, the `train` split, seed 11, a stream of
its own), written once and shipped so that the SFT data is a fixed, reviewable file, as a
hospital's curated demonstrations would be. Run it again only to change the set:

    .venv/bin/python scripts/make_demonstrations.py
"""

from __future__ import annotations

import json
from pathlib import Path

from clinalign.foundation.corpus import iter_qa_examples

COUNT = 400
SEED = 11
OUT = Path(__file__).resolve().parent.parent / "services/clinalign/demo/data/demonstrations.jsonl"


def main() -> None:
    seen: set[str] = set()
    lines = []
    for example in iter_qa_examples(SEED, "train"):
        if example.question in seen:
            continue
        seen.add(example.question)
        record = {"prompt": example.question, "completion": example.answer, "kind": example.kind}
        lines.append(json.dumps(record, ensure_ascii=False))
        if len(lines) == COUNT:
            break
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(lines)} demonstrations")


if __name__ == "__main__":
    main()
