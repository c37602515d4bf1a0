"""What the SFT and DPO trainers share: their hyperparameters, the TRL arguments common to
both (checkpoints included), the progress callback, the lineage manifest and the atomic
save of a causal-LM model directory (tokenizer included) that the generation service and
the registry load.

The pattern is ``clinalign.trainer.methods.reward_model.training``'s: a frozen
hyperparameter dataclass whose fields are what a job's ``spec.hyperparameters`` may set,
LoRA merged at save so the output is an ordinary full model, and the manifest in the keys
the registry reads.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peft
import torch

from clinalign.common.artefacts import MANIFEST_NAME, POLICY
from clinalign.common.errors import InvalidArgument
from clinalign.common.training import Progress as Progress
from clinalign.common.training import check_resume as check_resume
from clinalign.common.training import checkpoint_arguments, precision_arguments, write_model_dir
from clinalign.common.training import code_version as code_version
from clinalign.common.training import library_versions as library_versions
from clinalign.common.training import trainer_output_dir as trainer_output_dir

FORMAT_VERSION = 1


@dataclass(frozen=True)
class PolicyHyperparameters:
    """The optimisation settings SFT and DPO share."""

    epochs: float = 1.0
    learning_rate: float = 1e-5
    batch_size: int = 8  # examples (SFT) or pairs (DPO) per optimiser step and device
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"
    max_length: int = 1024  # tokens of prompt + completion; longer ones are truncated
    seed: int = 0
    # Recompute activations in the backward pass: less memory for ~20 % more time.
    activation_checkpointing: bool = False
    bf16: bool | None = None  # None: bf16 on a CUDA device that supports it, fp32 elsewhere
    # Optimiser steps between the checkpoints a job resumes from (the latest is kept).
    checkpoint_steps: int = 50

    def validate(self) -> None:
        positive = {
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_length": self.max_length,
            "checkpoint_steps": self.checkpoint_steps,
        }
        for name, value in positive.items():
            if not value > 0:
                raise InvalidArgument(name, f"must be positive, got {value}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InvalidArgument("warmup_ratio", "must be in [0, 1)")


def check_paths(base_model: Path, out_dir: Path) -> tuple[Path, Path]:
    base_model, out_dir = Path(base_model).resolve(), Path(out_dir)
    if not (base_model / "config.json").is_file():
        raise InvalidArgument("base_model", f"{base_model} is not a Hugging Face model directory")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InvalidArgument("out", f"{out_dir} exists and is not empty; choose a new directory")
    return base_model, out_dir


def trainer_arguments(
    hyper: PolicyHyperparameters, output_dir: str, *, checkpoints: bool = False
) -> dict[str, Any]:
    """``SFTConfig``/``DPOConfig`` keyword arguments common to both; with ``checkpoints``,
    a checkpoint in ``output_dir`` every ``hyper.checkpoint_steps`` steps."""
    return {
        "output_dir": output_dir,
        "num_train_epochs": hyper.epochs,
        "per_device_train_batch_size": hyper.batch_size,
        "gradient_accumulation_steps": hyper.gradient_accumulation_steps,
        "learning_rate": hyper.learning_rate,
        "weight_decay": hyper.weight_decay,
        "warmup_steps": hyper.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        "lr_scheduler_type": hyper.lr_scheduler,
        "max_length": hyper.max_length,
        # transformers 5 renamed gradient_checkpointing; TRL still sets the old name (True
        # by default) unless the new one is given.
        "activation_checkpointing": hyper.activation_checkpointing,
        **precision_arguments(hyper.bf16),
        "seed": hyper.seed,
        "data_seed": hyper.seed,
        "logging_steps": 1,
        **checkpoint_arguments(Path(output_dir) if checkpoints else None, hyper.checkpoint_steps),
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def lora_config(
    r: int, alpha: int, dropout: float, target_modules: str | tuple[str, ...]
) -> peft.LoraConfig:
    return peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
    )


def conversation(prompt: str, answer: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(prompt messages, completion messages): TRL's conversational prompt-completion form,
    which it renders through the tokenizer's chat template, the format generation serves."""
    return [{"role": "user", "content": prompt}], [{"role": "assistant", "content": answer}]


def save_policy(model: Any, tokenizer: Any, manifest: dict[str, Any], out_dir: Path) -> None:
    write_model_dir(model, tokenizer, out_dir, {MANIFEST_NAME: manifest})


def loss_metrics(summary: Any, callback: Progress) -> dict[str, float]:
    """Steps and losses of a finished TRL run, for the manifest."""
    curve = callback.loss_curve
    return {
        "train_steps": float(summary.global_step),
        "train_loss": float(summary.training_loss),
        "train_loss_first": curve[0][1] if curve else float("nan"),
        "train_loss_last": curve[-1][1] if curve else float("nan"),
    }


def policy_manifest(
    *,
    method: dict[str, Any],
    hyper: PolicyHyperparameters,
    lora: Any,
    metrics: dict[str, float],
    callback: Progress,
    lineage: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """The manifest of a trained policy (the registry reads kind, lineage and metrics).
    ``lineage``: snapshot_hash, snapshot_hash_source, base_model, parent_version."""
    return {
        "kind": POLICY,
        "format_version": FORMAT_VERSION,
        **lineage,
        "seed": hyper.seed,
        "config": {"hyperparameters": asdict(hyper), "lora": asdict(lora) if lora else None},
        "method": {**method, "lora": "merged into full weights" if lora else None},
        "metrics": metrics,
        "loss_curve": [[s, round(v, 6)] for s, v in callback.loss_curve],
        "code_version": code_version(),
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - started, 2),
    }
