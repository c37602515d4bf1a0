"""What every training run shares (reward model, SFT, DPO): the progress callback,
checkpoints and resuming from them, the code and library versions recorded in manifests,
and writing a model directory atomically.

Imported only by training code: it pulls in torch, transformers, TRL and peft.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
import trl
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from clinalign import __version__
from clinalign.common.artefacts import LoraSettings, ProgressFn
from clinalign.common.errors import InvalidArgument

# What transformers' Trainer writes last into a checkpoint directory (``_save_checkpoint``):
# a directory without it was cut short while saving.
TRAINER_STATE_FILE = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class Progress(TrainerCallback):
    """Reports each logged loss to ``progress`` and keeps the loss curve and the last
    values of the other logged metrics. A resumed run's curve starts with the steps the
    checkpoint's log history holds; only the new steps go to ``progress``."""

    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress = progress
        self.loss_curve: list[tuple[int, float]] = []
        self.last: dict[str, float] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.loss_curve = [
            (int(entry["step"]), float(entry["loss"]))
            for entry in state.log_history
            if "loss" in entry and "step" in entry
        ]

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
        if not logs or "loss" not in logs:  # the end-of-training summary has train_loss
            return
        self.loss_curve.append((int(state.global_step), float(logs["loss"])))
        self.last = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
        if self.progress is not None:
            self.progress(int(state.global_step), int(state.max_steps), dict(self.last))


def checkpoint_arguments(checkpoint_dir: Path | None, every: int) -> dict[str, Any]:
    """``TrainingArguments`` for checkpoints: every ``every`` optimiser steps into the run's
    output directory, keeping only the latest (weights, optimiser, scheduler, RNG states and
    the trainer state, which holds the data position); none without ``checkpoint_dir``."""
    if checkpoint_dir is None:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": every, "save_total_limit": 1}


def precision_arguments(bf16: bool | None) -> dict[str, Any]:
    """``TrainingArguments`` for the precision: bf16 autocast when asked for, and by default
    (None) only on a CUDA device that supports it. TRL defaults bf16 to True everywhere,
    CPUs included, where it is slower without native bf16 and differs between machines.
    bf16 on a machine without CUDA runs on the CPU, which transformers needs told
    (``use_cpu``), or it refuses with "Your setup doesn't support bf16/gpu"."""
    cuda = torch.cuda.is_available()
    if bf16 is None:
        bf16 = cuda and torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "use_cpu": bf16 and not cuda}


@contextlib.contextmanager
def trainer_output_dir(checkpoint_dir: Path | None, prefix: str) -> Iterator[str]:
    """The Trainer's ``output_dir``: ``checkpoint_dir`` (created) when checkpointing, else a
    scratch directory removed afterwards."""
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        yield str(checkpoint_dir)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        yield scratch


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-<step>`` directory under ``checkpoint_dir``, or None.
    As ``transformers.trainer_utils.get_last_checkpoint``, but a directory the Trainer was
    stopped while writing (no trainer state yet) is passed over for the one before it."""
    if not checkpoint_dir.is_dir():
        return None
    steps = {
        int(m.group(1)): path
        for path in checkpoint_dir.iterdir()
        if (m := _CHECKPOINT.match(path.name)) and (path / TRAINER_STATE_FILE).is_file()
    }
    return steps[max(steps)] if steps else None


def check_resume(resume_from: Path | None) -> str | None:
    """``resume_from`` as ``Trainer.train(resume_from_checkpoint=...)`` takes it, checked."""
    if resume_from is None:
        return None
    if not (Path(resume_from) / TRAINER_STATE_FILE).is_file():
        raise InvalidArgument("resume_from", f"{resume_from} is not a complete Trainer checkpoint")
    return str(resume_from)


def code_version() -> dict[str, str | None]:
    """The package version and, in a git checkout, the commit."""
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


def write_model_dir(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    json_files: Mapping[str, Any],
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Weights, tokenizer and the given JSON files, written in a sibling directory and
    renamed into place, so ``out_dir`` (absent or empty) is never half-written."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.writing-", dir=out_dir.parent))
    try:
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging, save_jinja_files=False)  # as the base model
        for name, content in json_files.items():
            (staging / name).write_text(json.dumps(content, indent=2) + "\n")
        if extra is not None:
            extra(staging)  # more files the caller writes into the directory
        # Other processes and containers (often another user) read a model directory.
        staging.chmod(0o755)
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out_dir.exists():
            out_dir.rmdir()  # checked empty before training
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def seq_cls_lora_config(lora: LoraSettings) -> peft.LoraConfig:
    """peft's LoRA settings for a sequence classifier (a reward or cost model): the head
    is new, so it trains in full (``modules_to_save``), not through the adapter."""
    targets = lora.target_modules
    return peft.LoraConfig(
        task_type=peft.TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        modules_to_save=["score"],
    )
