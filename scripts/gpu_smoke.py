"""GPU smoke check of the local generation backend: builds the tiny model, serves it on
CUDA (bf16) through LocalBackend's continuous-batching scheduler, sends concurrent greedy
and sampled requests, and compares the greedy ones with plain ``model.generate``. Run on a
machine with a GPU: `PYTHONPATH=services python3 scripts/gpu_smoke.py`. Prints one JSON
line."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import torch

from clinalign.foundation import build_tiny_model
from clinalign.generation.backend import collect
from clinalign.generation.engine import LocalBackend
from clinalign.generation.params import Sampling

PROMPTS = [
    "I have a fever.",
    "My ankle is swollen after a fall. What should I do?",
    "How should I take metformin?",
    "I have had a cough for three weeks and night sweats.",
]


async def main() -> None:
    out = Path(tempfile.mkdtemp()) / "tiny"
    build_tiny_model(out)
    backend = LocalBackend(
        out, name="clinalign-policy", version="tiny", device="cuda", max_queue=16, max_batch=8
    )
    await backend.start()
    assert backend._scheduler is not None
    model = backend._scheduler.model
    assert next(model.parameters()).device.type == "cuda"
    greedy = Sampling(temperature=0.0, max_new_tokens=32)
    sampled = Sampling(temperature=0.8, top_p=0.9, max_new_tokens=32, seed=1)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(collect(backend.stream(p, greedy)) for p in PROMPTS),
        *(collect(backend.stream(p, sampled)) for p in PROMPTS),
    )
    wall = time.perf_counter() - started
    matches = 0
    for prompt, result in zip(PROMPTS, results[: len(PROMPTS)], strict=True):
        ids = torch.tensor([backend.encode(prompt, 32)], device="cuda")
        with torch.inference_mode():
            ref = model.generate(ids, max_new_tokens=32, do_sample=False)
        text = backend.tokenizer.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
        matches += text == result.text
    print(
        json.dumps(
            {
                "name": "gpu_smoke",
                "device": torch.cuda.get_device_name(0),
                "dtype": str(next(model.parameters()).dtype),
                "requests": len(results),
                "greedy_matches_generate": f"{matches}/{len(PROMPTS)}",
                "tokens": sum(r.completion_tokens for r in results),
                "finish": sorted({r.finish_reason for r in results}),
                "wall_s": round(wall, 3),
            }
        )
    )
    await backend.close()


if __name__ == "__main__":
    asyncio.run(main())
