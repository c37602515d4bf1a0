"""Direct GPU check: builds the tests' tiny model (``build_tiny_model``, as the
``tiny_model_dir`` fixture does), runs PPO through ``train_ppo`` on CUDA and generates with
the generation engine's ``LocalBackend`` on CUDA, then prints one JSON line of measured
figures. Asserts the trained module's parameters sit on CUDA, accelerate runs bf16 mixed
precision and the forward passes compute in bf16 (autocast), and the served model is bf16.

Run from the repository root: ``PYTHONPATH=services python3 scripts/gpu_check.py``.
``GPU_CHECK_ALLOW_CPU=1`` lets it run without a GPU (no CUDA/bf16 assertions), to check
the script itself."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from clinalign.foundation import build_tiny_model
from clinalign.generation.backend import collect
from clinalign.generation.engine import LocalBackend
from clinalign.generation.params import Sampling
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.trainer import train_ppo

ALLOW_CPU = os.environ.get("GPU_CHECK_ALLOW_CPU") == "1"
PPO_ITERATIONS = int(os.environ.get("GPU_CHECK_PPO_ITERATIONS", "6"))
PROMPTS = [
    "I have a fever.",
    "My ankle is swollen after a fall. What should I do?",
    "How should I take metformin?",
    "I have had a cough for three weeks and night sweats.",
    "I have had a sore throat for 3 days. What should I do?",
    "Can I take ibuprofen with lisinopril?",
    "My child has a rash and a high temperature.",
    "I feel dizzy when I stand up.",
]


def ppo_check(model_dir: Path, work: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {"linear_out_dtypes": set()}
    original_prepare = Accelerator.prepare

    def prepare(self: Accelerator, *args: Any, **kwargs: Any) -> Any:
        result = original_prepare(self, *args, **kwargs)
        model = self.unwrap_model(result[0])
        seen["accelerator_device"] = str(self.device)
        seen["mixed_precision"] = str(self.mixed_precision)
        seen["param_devices"] = sorted({str(p.device) for p in model.parameters()})
        seen["param_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            seen["linear_out_dtypes"].add(str(out.dtype))

        first.register_forward_hook(hook)
        return result

    Accelerator.prepare = prepare  # type: ignore[method-assign]
    stamps: list[float] = []
    reported: list[float] = []

    def progress(_it: int, _total: int, figures: dict[str, float]) -> None:
        stamps.append(time.perf_counter())
        reported.append(float(figures["iteration_s"]))

    hyper = PPOHyperparameters(
        iterations=PPO_ITERATIONS,
        rollout_batch_size=8,
        minibatches=2,
        ppo_epochs=2,
        response_length=24,
        learning_rate=1e-3,
        critic="value_head",
        checkpoint_every=0,
        seed=3,
    )
    try:
        started = time.perf_counter()
        manifest = train_ppo(
            PROMPTS,
            model_dir,
            work / "ppo",
            hyper,
            lambda p, r: [1.0 for _ in r],
            progress=progress,
        )
        total = time.perf_counter() - started
    finally:
        Accelerator.prepare = original_prepare  # type: ignore[method-assign]
    if not ALLOW_CPU:
        devices = seen["param_devices"]
        assert devices and all(d.startswith("cuda") for d in devices), seen
        assert seen["mixed_precision"] == "bf16", seen
        assert "torch.bfloat16" in seen["linear_out_dtypes"], seen  # autocast computed in bf16
    assert len(reported) == PPO_ITERATIONS, reported
    later = reported[1:] or reported
    return {
        "ppo_iterations": PPO_ITERATIONS,
        "ppo_rollout_batch": hyper.rollout_batch_size,
        "ppo_response_length": hyper.response_length,
        "ppo_first_iteration_s": round(reported[0], 3),
        "ppo_s_per_iteration_after_first": round(statistics.fmean(later), 3),
        "ppo_train_ppo_total_s": round(total, 2),
        "ppo_accelerator_device": seen["accelerator_device"],
        "ppo_mixed_precision": seen["mixed_precision"],
        "ppo_param_devices": seen["param_devices"],
        "ppo_param_dtypes": seen["param_dtypes"],
        "ppo_forward_linear_out_dtypes": sorted(seen["linear_out_dtypes"]),
        "ppo_score_last": manifest["metrics"].get("score_last"),
    }


async def generation_check(model_dir: Path, device: str) -> dict[str, Any]:
    backend = LocalBackend(
        model_dir,
        name="clinalign-policy",
        version="tiny",
        device=device,
        max_queue=64,
        max_batch=16,
    )
    await backend.start()
    try:
        assert backend._scheduler is not None
        model = backend._scheduler.model
        param = next(model.parameters())
        if not ALLOW_CPU:
            assert param.device.type == "cuda", param.device
            assert param.dtype == torch.bfloat16, param.dtype
        sampled = Sampling(temperature=0.8, top_p=0.95, max_new_tokens=64, seed=1)
        await collect(backend.stream(PROMPTS[0], sampled))  # warm-up, not timed
        started = time.perf_counter()
        one = await collect(backend.stream(PROMPTS[1], sampled))
        single_s = time.perf_counter() - started
        batch = [
            Sampling(temperature=0.8, top_p=0.95, max_new_tokens=64, seed=s) for s in range(16)
        ]
        started = time.perf_counter()
        results = await asyncio.gather(
            *(collect(backend.stream(PROMPTS[i % len(PROMPTS)], s)) for i, s in enumerate(batch))
        )
        batch_s = time.perf_counter() - started
        tokens = sum(r.completion_tokens for r in results)
        return {
            "gen_device": str(param.device),
            "gen_dtype": str(param.dtype),
            "gen_single_tokens": one.completion_tokens,
            "gen_single_tokens_per_s": round(one.completion_tokens / single_s, 1),
            "gen_single_ttft_s": round(one.ttft_s, 4),
            "gen_concurrent_requests": len(results),
            "gen_concurrent_tokens": tokens,
            "gen_concurrent_wall_s": round(batch_s, 3),
            "gen_concurrent_tokens_per_s": round(tokens / batch_s, 1),
            "gen_finish_reasons": sorted({r.finish_reason for r in results}),
        }
    finally:
        await backend.close()


def main() -> None:
    cuda = torch.cuda.is_available()
    if not cuda and not ALLOW_CPU:
        sys.exit("gpu_check.py: no CUDA device (GPU_CHECK_ALLOW_CPU=1 overrides)")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.perf_counter()
    build_tiny_model(work / "tiny")
    build_s = time.perf_counter() - started
    figures: dict[str, Any] = {
        "name": "gpu_check",
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16_supported": cuda and torch.cuda.is_bf16_supported(),
        "tiny_model_build_s": round(build_s, 2),
    }
    figures.update(ppo_check(work / "tiny", work))
    figures.update(asyncio.run(generation_check(work / "tiny", "cuda" if cuda else "cpu")))
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        figures["cuda_max_memory_allocated_mib"] = round(peak / 2**20, 1)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
