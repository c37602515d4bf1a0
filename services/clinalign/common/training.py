"""What every training run shares (reward model, SFT, DPO): the progress callback, the
code and library versions recorded in manifests, and writing a model directory atomically.

Imported only by training code: it pulls in torch, transformers, TRL and peft.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
import trl
from transformers import TrainerCallback

from clinalign import __version__

ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss), as in foundation


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
    model: Any, tokenizer: Any, out_dir: Path, json_files: Mapping[str, Any]
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
