"""Foundation bootstrap benchmark: the full embedded-model preset built from nothing, as
``clinalign bootstrap`` and ``make demo`` build it, and whether what it builds is fluent.

It was a slow test until 2026-12-07; at about eight minutes it was a third of ``make
test``, for a figure (how long the preset takes, where its loss ends, whether a greedy
answer is fluent) that is the preset's, not the code's: the tiny preset's tests cover the
same build code. Reported: wall time, steps (planned, run, and whether the build's own time
budget cut it short), final loss, and a greedy answer's word count; ``fluent`` is the old
test's bar (final loss < 1.5 and at least 10 words).

    .venv/bin/python bench/foundation.py [--seed 0] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

QUESTION = "I have had a fever and a cough for three days. What should I do?"


def one_build(seed: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinalign.foundation import bootstrap, format_prompt

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "foundation"
        started = time.perf_counter()
        manifest = bootstrap(out, seed=seed)
        wall_s = time.perf_counter() - started
        tokenizer = AutoTokenizer.from_pretrained(out)
        model = AutoModelForCausalLM.from_pretrained(out)
        batch = tokenizer(format_prompt(QUESTION), return_tensors="pt")
        output = model.generate(**batch, max_new_tokens=60, do_sample=False)
        answer = tokenizer.decode(
            output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True
        )
    training = manifest["training"]
    words = len(re.findall(r"[a-z]+", answer.lower()))
    return {
        "wall_s": round(wall_s, 1),
        "planned_steps": training["planned_steps"],
        "steps": training["steps"],
        "budget_limited": training["budget_limited"],
        "final_loss": round(float(manifest["final_loss"]), 4),
        "answer_words": words,
        "fluent": bool(manifest["final_loss"] < 1.5 and words >= 10),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rounds = [one_build(args.seed) for _ in range(args.rounds)]
    for r in rounds:
        print(json.dumps({"round": r}), flush=True)
    print(
        json.dumps(
            {
                "bench": "foundation",
                "seed": args.seed,
                "rounds": rounds,
                "median_wall_s": statistics.median(r["wall_s"] for r in rounds),
                "median_final_loss": statistics.median(r["final_loss"] for r in rounds),
                "all_fluent": all(r["fluent"] for r in rounds),
            }
        )
    )


if __name__ == "__main__":
    main()
