"""GPU smoke check of the local generation backend: builds the tiny model, loads it on
CUDA (bf16) through LocalEngine, and generates greedily and sampled. Run on a machine
with a GPU: `PYTHONPATH=services python3 scripts/gpu_smoke.py`. Prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import torch

from clinalign.foundation import build_tiny_model
from clinalign.generation.engine import LocalEngine
from clinalign.generation.params import Sampling


async def main() -> None:
    out = Path(tempfile.mkdtemp()) / "tiny"
    build_tiny_model(out)
    engine = LocalEngine(out, "clinalign-policy", "tiny", "cuda", max_queue=4)
    engine.load()
    assert next(engine.model.parameters()).device.type == "cuda"
    started = time.perf_counter()
    greedy = await engine.generate("I have a fever.", Sampling(temperature=0.0, max_new_tokens=32))
    sampled = await engine.generate(
        "I have a fever.", Sampling(temperature=0.8, top_p=0.9, max_new_tokens=32, seed=1)
    )
    print(
        json.dumps(
            {
                "name": "gpu_smoke",
                "device": torch.cuda.get_device_name(0),
                "dtype": str(next(engine.model.parameters()).dtype),
                "greedy_tokens": greedy.completion_tokens,
                "sampled_tokens": sampled.completion_tokens,
                "finish": [greedy.finish_reason, sampled.finish_reason],
                "wall_s": round(time.perf_counter() - started, 3),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
