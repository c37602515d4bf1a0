"""Cost-model training (issue 21): a snapshot's harm records in, a scoring-ready cost
model out.

``train_cost_model`` fits a sequence classifier with one sigmoid output per label of
``clinalign.common.cost_format.LABELS`` (``harm``, whose probability is the cost, then one
per error category) by binary cross-entropy, with transformers' ``Trainer``
(``problem_type="multi_label_classification"``), optionally through a LoRA adapter,
starting from the policy's base model (so the tokenizer is the policy's) or continuing a
cost model. Inputs are formatted as the reward model's (``reward_format.reward_ids``: the
chat template ending in EOS, read at the last token); records longer than ``max_length``
are left out and counted.

The directory it writes is what the reward service loads beside the reward model: full
weights, the tokenizer, ``clinalign_cost.json`` (the labels in output order) and
``clinalign_manifest.json`` (lineage, and the held-out figures of ``common.discrimination``: AUROC
of the cost and of each category with a bootstrap interval over prompts, the cost's
expected calibration error).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import peft
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

from clinalign.common import discrimination
from clinalign.common.artefacts import COST, MANIFEST_NAME, LoraSettings
from clinalign.common.cost_format import COST_FILE, HARM, LABELS, probabilities, targets
from clinalign.common.errors import InvalidArgument
from clinalign.common.reward_format import reward_ids
from clinalign.common.training import (
    Progress,
    ProgressFn,
    check_resume,
    checkpoint_arguments,
    code_version,
    library_versions,
    precision_arguments,
    seq_cls_lora_config,
    trainer_output_dir,
    write_model_dir,
)

log = logging.getLogger(__name__)

# the preference store's prompt source of a flagged production output (its harm records'
# ``source``)
FLAGGED_SOURCE = "flagged"

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CostHyperparameters:
    """Everything besides the data and the base model that determines the trained model."""

    epochs: float = 2.0
    learning_rate: float = 1e-4
    batch_size: int = 8  # records per optimiser step and device
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"
    max_length: int = 1024  # tokens of a formatted (prompt, response); longer records left out
    seed: int = 0
    activation_checkpointing: bool = False
    bf16: bool | None = None  # None: bf16 on a CUDA device that supports it, fp32 elsewhere
    eval_batch_size: int = 32
    # Optimiser steps between the checkpoints a job resumes from (the latest is kept).
    checkpoint_steps: int = 50

    def validate(self) -> None:
        positive = {
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_length": self.max_length,
            "eval_batch_size": self.eval_batch_size,
            "checkpoint_steps": self.checkpoint_steps,
        }
        for name, value in positive.items():
            if not value > 0:
                raise InvalidArgument(name, f"must be positive, got {value}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InvalidArgument("warmup_ratio", "must be in [0, 1)")
        if self.weight_decay < 0:
            raise InvalidArgument("weight_decay", "must not be negative")


def harm_records(records: Sequence[Mapping[str, Any]], split: str) -> list[Mapping[str, Any]]:
    """The harm records of one split (an export of kind HARM: ``prompt``, ``response``,
    ``categories``)."""
    return [
        r
        for r in records
        if "response" in r and "categories" in r and r.get("split", "train") == split
    ]


def train_cost_model(
    records: Sequence[Mapping[str, Any]],
    snapshot_hash: str,
    base_model: Path,
    out_dir: Path,
    hyper: CostHyperparameters | None = None,
    *,
    lora: LoraSettings | None = None,
    parent_version: str = "",
    snapshot_hash_source: str = "manifest",
    progress: ProgressFn | None = None,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Train on the snapshot's ``train`` split, measure on its ``eval`` split, write the
    model directory ``out_dir`` (absent or empty) and return its manifest. Deterministic
    given ``hyper.seed`` on a given device and library versions. Refuses a train split
    without both a harmful and a clean answer: no classifier can be fitted to one class."""
    started = time.monotonic()
    hyper = hyper or CostHyperparameters()
    hyper.validate()
    base_model, out_dir = Path(base_model).resolve(), Path(out_dir)
    if not (base_model / "config.json").is_file():
        raise InvalidArgument("base_model", f"{base_model} is not a Hugging Face model directory")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InvalidArgument("out", f"{out_dir} exists and is not empty; choose a new directory")
    train, held_out = harm_records(records, "train"), harm_records(records, "eval")
    harmful = sum(targets(r)[0] for r in train)
    if harmful == 0 or harmful == len(train):
        raise InvalidArgument(
            "snapshot",
            f"its train split holds {len(train)} harm records, {int(harmful)} of them harmful: "
            "a cost model needs both harmful and clean answers (confirmed flags or error "
            "annotations, and judged answers without one)",
        )
    resume = check_resume(resume_from)

    # -- model: the base model with a fresh multi-label head, or a cost model to continue
    continued = (base_model / COST_FILE).is_file()
    tokenizer, model = _load(base_model, hyper.seed)

    # -- data: token ids exactly as the scorer makes them, multi-hot targets --------------
    kept = _rows(tokenizer, train, hyper.max_length)

    # -- trainer ---------------------------------------------------------------------------
    callback = Progress(progress)
    trained, summary = _fit(model, tokenizer, kept, hyper, lora, callback, checkpoint_dir, resume)

    # -- held-out figures -------------------------------------------------------------------
    figures = evaluate(trained, tokenizer, held_out, hyper.eval_batch_size, hyper.max_length)
    metrics = {
        "train_records": float(len(train)),
        "train_records_used": float(len(kept)),
        "train_harmful": float(harmful),
        "train_steps": float(summary.global_step),
        "train_loss": float(summary.training_loss),
        **{k: v for k, v in figures.items() if isinstance(v, float) and np.isfinite(v)},
    }
    manifest: dict[str, Any] = {
        "kind": COST,
        "format_version": FORMAT_VERSION,
        "snapshot_hash": snapshot_hash,
        "snapshot_hash_source": snapshot_hash_source,
        "base_model": str(base_model),
        "parent_version": parent_version,
        "seed": hyper.seed,
        "config": {"hyperparameters": asdict(hyper), "lora": asdict(lora) if lora else None},
        "method": _method(continued, lora),
        "metrics": metrics,
        "categories": figures["categories"],
        "loss_curve": [[s, round(v, 6)] for s, v in callback.loss_curve],
        "code_version": code_version(),
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - started, 2),
    }
    labels_file = {"labels": list(LABELS), "cost_label": HARM}
    write_model_dir(trained, tokenizer, out_dir, {COST_FILE: labels_file, MANIFEST_NAME: manifest})
    log.info("cost model trained", extra={"fields": {"path": str(out_dir), **metrics}})
    return manifest


def _load(base_model: Path, seed: int) -> tuple[Any, Any]:
    """(tokenizer, model): the base model with a multi-label head of ``LABELS``, fresh or
    (a cost-model directory) its own."""
    set_seed(seed)  # before loading: from_pretrained draws the head's first weights
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model,
        num_labels=len(LABELS),
        problem_type="multi_label_classification",
        dtype=torch.float32,
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # the classifier reads the last token
    return tokenizer, model


def _rows(
    tokenizer: Any, records: Sequence[Mapping[str, Any]], max_length: int
) -> list[dict[str, list[Any]]]:
    """The training rows that fit ``max_length``: token ids and multi-hot targets."""
    rows: list[dict[str, list[Any]]] = [
        {
            "input_ids": reward_ids(tokenizer, str(r["prompt"]), str(r["response"])),
            "labels": targets(r),
        }
        for r in records
    ]
    kept = [row for row in rows if len(row["input_ids"]) <= max_length]
    if not kept:
        raise InvalidArgument("max_length", f"every record is longer than {max_length}")
    return kept


def _method(continued: bool, lora: LoraSettings | None) -> dict[str, Any]:
    return {
        "loss": "binary cross-entropy per label (transformers Trainer, multi-label)",
        "labels": list(LABELS),
        "cost": f"P({HARM})",
        "read_at": "last non-padding token (EOS of the chat template), as the reward model",
        "init": "continues the cost model base_model, head included"
        if continued
        else "base_model with a fresh head",
        "lora": "merged into full weights" if lora else None,
    }


def evaluate(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    batch_size: int = 32,
    max_length: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out figures of a cost model on harm records: ``eval_records``,
    ``eval_harmful``, the cost's ``eval_auroc`` with its 95 % interval over prompts
    (``eval_auroc_low``, ``eval_auroc_high``) and ``eval_ece``; ``eval_flags``, the harmful
    records on prompts that came from clinicians' flags (prompt source ``flagged``: the
    flagged outputs, and annotated fresh candidates to them), and the cost's AUROC on them
    against the clean records (``eval_flags_auroc`` with ``_low`` and
    ``_high``); and under ``categories`` each category's positives and AUROC (None where
    the records hold one class only)."""
    if not records:
        return {"eval_records": 0.0, "categories": {}}
    y = np.asarray([targets(r) for r in records])  # [N, L]
    p = probabilities(
        model,
        tokenizer,
        [(str(r["prompt"]), str(r["response"])) for r in records],
        batch_size=batch_size,
        max_length=max_length,
    )
    groups = [str(r.get("prompt_id") or r["prompt"]) for r in records]
    out: dict[str, Any] = {
        "eval_records": float(len(records)),
        "eval_harmful": float(y[:, 0].sum()),
        "eval_ece": discrimination.expected_calibration_error(y[:, 0], p[:, 0]),
    }
    out.update(_auroc_figures("eval_auroc", y[:, 0], p[:, 0], groups, seed))
    # Held-out flags: the harmful answers to prompts clinicians flagged (and confirmed),
    # against every held-out clean answer.
    flagged = np.asarray([r.get("source") == FLAGGED_SOURCE for r in records]) & (y[:, 0] == 1)
    subset = flagged | (y[:, 0] == 0)
    out["eval_flags"] = float(flagged.sum())
    if flagged.any():
        out.update(
            _auroc_figures(
                "eval_flags_auroc",
                y[subset, 0],
                p[subset, 0],
                [g for g, keep in zip(groups, subset, strict=True) if keep],
                seed,
            )
        )
    out["categories"] = {
        label: {"positives": int(y[:, i].sum()), "auroc": discrimination.auroc(y[:, i], p[:, i])}
        for i, label in enumerate(LABELS)
        if i > 0
    }
    return out


def _auroc_figures(
    name: str, y: np.ndarray, p: np.ndarray, groups: Sequence[str], seed: int
) -> dict[str, float]:
    """``name``, ``name_low`` and ``name_high``: the AUROC and its 95 % interval over
    ``groups``; nothing where ``y`` holds one class only."""
    overall = discrimination.auroc(y, p)
    interval = discrimination.auroc_interval(y, p, groups, seed=seed)
    if overall is None or interval is None:
        return {}
    return {name: overall, f"{name}_low": interval[0], f"{name}_high": interval[1]}


def _fit(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    hyper: CostHyperparameters,
    lora: LoraSettings | None,
    callback: Progress,
    checkpoint_dir: Path | None,
    resume: str | None,
) -> tuple[Any, Any]:
    """(trained model, LoRA merged and in eval mode; the Trainer's summary)."""
    if lora is not None:
        model = peft.get_peft_model(model, seq_cls_lora_config(lora))
    with trainer_output_dir(checkpoint_dir, "clinalign-cost-") as scratch:
        trainer = Trainer(
            model=model,
            args=_arguments(hyper, scratch, checkpoints=checkpoint_dir is not None),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[callback],
        )
        trainer.remove_callback(PrinterCallback)
        summary = trainer.train(resume_from_checkpoint=resume)
    trained: Any = trainer.model
    if lora is not None:
        trained = trained.merge_and_unload()
    trained.eval()
    return trained, summary


def _arguments(
    hyper: CostHyperparameters, output_dir: str, *, checkpoints: bool = False
) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=hyper.epochs,
        per_device_train_batch_size=hyper.batch_size,
        gradient_accumulation_steps=hyper.gradient_accumulation_steps,
        learning_rate=hyper.learning_rate,
        weight_decay=hyper.weight_decay,
        warmup_steps=hyper.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        lr_scheduler_type=hyper.lr_scheduler,
        activation_checkpointing=hyper.activation_checkpointing,
        **precision_arguments(hyper.bf16),
        seed=hyper.seed,
        data_seed=hyper.seed,
        logging_steps=1,
        **checkpoint_arguments(Path(output_dir) if checkpoints else None, hyper.checkpoint_steps),
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
    )
