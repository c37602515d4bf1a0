"""What the SFT and DPO trainers share: their hyperparameters, the TRL arguments common to
both, the progress callback, the lineage manifest and the atomic save of a causal-LM
model directory (tokenizer included) that the generation service and the registry load.

The pattern is ``clinalign.reward.training``'s: a frozen hyperparameter dataclass whose
fields are what a job's ``spec.hyperparameters`` may set, LoRA merged at save so the
output is an ordinary full model, and the manifest in the keys the registry reads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
import trl
from transformers import TrainerCallback

from clinalign import __version__
from clinalign.common.errors import InvalidArgument
from clinalign.trainer.registry import MANIFEST_NAME

FORMAT_VERSION = 1
ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)


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

    def validate(self) -> None:
        positive = {
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_length": self.max_length,
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


def trainer_arguments(hyper: PolicyHyperparameters, output_dir: str) -> dict[str, Any]:
    """``SFTConfig``/``DPOConfig`` keyword arguments common to both."""
    bf16 = hyper.bf16
    if bf16 is None:
        # TRL defaults bf16 to True everywhere, CPUs included, where it is slower without
        # native bf16 and differs between machines; use it only where it pays.
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
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
        "bf16": bf16,
        "seed": hyper.seed,
        "data_seed": hyper.seed,
        "logging_steps": 1,
        "save_strategy": "no",
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


class Progress(TrainerCallback):
    """Reports each logged loss to ``progress`` and keeps the loss curve and the last
    values of the other logged metrics."""

    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress = progress
        self.loss_curve: list[tuple[int, float]] = []
        self.last: dict[str, float] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
        if not logs or "loss" not in logs:  # the end-of-training summary has train_loss
            return
        self.loss_curve.append((int(state.global_step), float(logs["loss"])))
        self.last = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
        if self.progress is not None:
            self.progress(int(state.global_step), int(state.max_steps), float(logs["loss"]))


def code_version() -> dict[str, str | None]:
    commit = None
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if result.returncode == 0:
            commit = result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass  # an installed package has no git checkout
    return {"package": __version__, "git_commit": commit}


def library_versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
    }


def save_policy(model: Any, tokenizer: Any, manifest: dict[str, Any], out_dir: Path) -> None:
    """Written in a sibling directory and renamed into place, so ``out_dir`` is never
    half-written."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.writing-", dir=out_dir.parent))
    try:
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging, save_jinja_files=False)  # as the base model
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        # Other processes and containers (often another user) read a model directory.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if out_dir.exists():
            out_dir.rmdir()  # checked empty before training
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
