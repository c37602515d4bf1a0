"""``train_dpo`` and ``train_sft`` on the tiny model: DPO learns a preference for answers
that carry a marker (held-out DPO loss below log 2, implicit-reward accuracy above
chance); SFT with LoRA writes merged full weights that differ from the base."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from clinalign.common.artefacts import LoraSettings
from clinalign.common.errors import InvalidArgument
from clinalign.common.training import precision_arguments
from clinalign.trainer.methods.dpo import DPOHyperparameters, dpo_examples, train_dpo
from clinalign.trainer.methods.sft import SFTHyperparameters, sft_examples, sft_trainer, train_sft

ADVICE = "Rest, drink fluids and see your GP if it gets worse."
MARKER = " Call 999 if you cannot breathe."


def _preferences(n: int) -> list[dict[str, Any]]:
    """The chosen answer is the rejected one plus a safety-net sentence."""
    return [
        {
            "prompt": f"I have had a cough for {i} days. What should I do?",
            "chosen": ADVICE + MARKER,
            "rejected": ADVICE,
            "tie": False,
            "split": "eval" if i % 4 == 0 else "train",
        }
        for i in range(n)
    ] + [{"prompt": "p", "chosen": "a", "rejected": "b", "tie": True, "split": "train"}]


def _tensor(model_dir: Path, name: str) -> torch.Tensor:
    return load_file(model_dir / "model.safetensors")[name]


@pytest.mark.slow
def test_dpo_learns_the_preferred_marker(tiny_model_dir: Path, tmp_path: Path) -> None:
    hyper = DPOHyperparameters(epochs=2, learning_rate=1e-3, batch_size=12, warmup_ratio=0.0)
    manifest = train_dpo(_preferences(48), "hash-1", tiny_model_dir, tmp_path / "dpo", hyper)
    metrics = manifest["metrics"]
    assert metrics["train_ties_dropped"] == 1 and metrics["train_pairs"] == 36
    assert metrics["train_loss_first"] == pytest.approx(math.log(2), abs=1e-4)  # π = π_ref
    assert metrics["train_loss_last"] < metrics["train_loss_first"] - 0.1
    assert metrics["eval_loss"] < math.log(2) - 0.1
    assert metrics["eval_reward_accuracy"] > 0.9
    assert manifest["kind"] == "policy" and manifest["snapshot_hash"] == "hash-1"
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(_tensor(tmp_path / "dpo", name), _tensor(tiny_model_dir, name))


def test_sft_with_lora_merges_into_full_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    records = [
        {"prompt": f"Cough for {i} days?", "completion": ADVICE + MARKER, "split": "train"}
        for i in range(16)
    ]
    hyper = SFTHyperparameters(epochs=2, learning_rate=1e-2, batch_size=8, warmup_ratio=0.0)
    lora = LoraSettings(r=4, alpha=8)
    manifest = train_sft(records, "hash-2", tiny_model_dir, tmp_path / "sft", hyper, lora=lora)
    out = tmp_path / "sft"
    assert manifest["metrics"]["train_loss_last"] < manifest["metrics"]["train_loss_first"]
    assert manifest["method"]["name"] == "sft"
    assert not (out / "adapter_config.json").exists()  # merged: an ordinary model
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(_tensor(out, name), _tensor(tiny_model_dir, name))


def test_examples_use_the_chat_form_and_refuse_empty_snapshots(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows, ties = dpo_examples(_preferences(4), "train")
    assert ties == 1 and len(rows) == 3
    assert rows[0]["prompt"] == [{"role": "user", "content": _preferences(4)[1]["prompt"]}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": ADVICE + MARKER}]
    assert sft_examples([{"prompt": "q", "completion": "a"}], "train") == [
        {
            "prompt": [{"role": "user", "content": "q"}],
            "completion": [{"role": "assistant", "content": "a"}],
        }
    ]
    with pytest.raises(InvalidArgument, match="snapshot: holds no SFT records"):
        train_sft(_preferences(4), "h", tiny_model_dir, tmp_path / "x")
    with pytest.raises(InvalidArgument, match="beta: must be positive"):
        train_dpo(_preferences(4), "h", tiny_model_dir, tmp_path / "y", DPOHyperparameters(beta=0))


def test_sft_loss_covers_the_completion_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = sft_examples([{"prompt": "I cough.", "completion": "See a GP."}], "train")
    trainer = sft_trainer(model, tokenizer, rows, SFTHyperparameters(), str(tmp_path))
    row = trainer.train_dataset[0]  # type: ignore[index]
    prompt = [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label == -100]
    target = [label for label in row["labels"] if label != -100]
    # The served format: the chat template's prompt, then the answer and its EOS.
    assert tokenizer.decode(prompt) == "<|user|>\nI cough.\n<|assistant|>\n"
    assert tokenizer.decode(target) == "See a GP.</s>"


@pytest.mark.parametrize(
    ("cuda", "asked", "expected"),
    [
        (False, None, {"bf16": False, "use_cpu": False}),  # fp32 on a CPU by default
        (False, True, {"bf16": True, "use_cpu": True}),  # asked for: autocast on the CPU
        (False, False, {"bf16": False, "use_cpu": False}),
        (True, None, {"bf16": True, "use_cpu": False}),  # a CUDA device with bf16
        (True, False, {"bf16": False, "use_cpu": False}),
    ],
)
def test_precision_arguments(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, asked: bool | None, expected: dict[str, bool]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: cuda)
    assert precision_arguments(asked) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 on the CPU: a machine without CUDA")
def test_sft_trains_in_bf16_on_the_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    """transformers refuses bf16 without CUDA unless told to use the CPU ("Your setup
    doesn't support bf16/gpu"); asked for, it trains under CPU autocast."""
    records = [
        {"prompt": f"Cough for {i} days?", "completion": ADVICE + MARKER, "split": "train"}
        for i in range(16)
    ]
    hyper = SFTHyperparameters(epochs=1, learning_rate=1e-2, batch_size=8, bf16=True)
    manifest = train_sft(records, "hash-3", tiny_model_dir, tmp_path / "sft", hyper)
    assert manifest["config"]["hyperparameters"]["bf16"] is True
    assert manifest["metrics"]["train_loss_last"] < manifest["metrics"]["train_loss_first"]
