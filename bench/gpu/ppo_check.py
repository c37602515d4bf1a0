"""A CUDA check of ClinAlign's PPO loop, for a machine with a GPU (not part of the test suite:
CI has none). Runs the loop on the tiny fixture model in fp32 and bf16, with LoRA and a
value head, and times iterations of a wider random-initialised Llama at a production-like
batch (64 prompts, 128-token responses). Prints one JSON line last."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services"))

from clinalign.common.artefacts import LoraSettings
from clinalign.foundation import build_tiny_model
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.trainer import train_ppo

PROMPTS = [f"I have had a sore throat for {n} days. What should I do?" for n in range(2, 200)]


def words(prompts: list[str], responses: list[str]) -> list[float]:
    return [min(len(r.split()), 8) / 8 for r in responses]


def run(model: Path, out: Path, **kw: object) -> dict[str, object]:
    times: list[float] = []
    base = {
        "iterations": 12,
        "rollout_batch_size": 16,
        "minibatches": 2,
        "ppo_epochs": 2,
        "response_length": 24,
        "learning_rate": 1e-3,
        "checkpoint_every": 0,
    }
    lora = kw.pop("lora", None)
    hyper = PPOHyperparameters(**{**base, **kw})  # type: ignore[arg-type]
    manifest = train_ppo(
        PROMPTS,
        model,
        out,
        hyper,
        words,
        lora=lora,  # type: ignore[arg-type]
        progress=lambda i, n, f: times.append(float(f["iteration_s"])),
    )
    scores = [f["score"] for _, f in manifest["history"]]
    return {
        "s_per_iter": statistics.median(times[1:]),
        "score_first3": statistics.fmean(scores[:3]),
        "score_last3": statistics.fmean(scores[-3:]),
        "max_kl": max(f["kl"] for _, f in manifest["history"]),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
    }


def wide_model(tiny: Path, out: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = root / "tiny"
        build_tiny_model(tiny)
        for name, kw in {
            "tiny_fp32_separate": {"bf16": False, "iterations": 30},
            "tiny_bf16_value_head": {"bf16": True, "critic": "value_head", "iterations": 30},
            "tiny_lora_bf16": {
                "bf16": True,
                "critic": "value_head",
                "lora": LoraSettings(r=8, alpha=16),
                "learning_rate": 5e-3,
            },
        }.items():
            torch.cuda.reset_peak_memory_stats()
            t0 = time.monotonic()
            results[name] = {**run(tiny, root / name, **kw), "wall_s": time.monotonic() - t0}
            print(name, results[name], file=sys.stderr, flush=True)
        wide = wide_model(tiny, root / "wide")
        for name, kw in {
            "wide_bf16_b64_r128": {
                "bf16": True,
                "rollout_batch_size": 64,
                "minibatches": 4,
                "response_length": 128,
                "iterations": 4,
                "learning_rate": 1e-5,
                "ppo_epochs": 4,
            },
        }.items():
            torch.cuda.reset_peak_memory_stats()
            t0 = time.monotonic()
            results[name] = {**run(wide, root / name, **kw), "wall_s": time.monotonic() - t0}
            print(name, results[name], file=sys.stderr, flush=True)
    print(json.dumps({"name": "ppo_gpu_check", **results}))


if __name__ == "__main__":
    main()
