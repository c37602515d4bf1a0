"""Supervised fine-tuning: a snapshot's SFT records in, a policy model directory out.

``train_sft`` fine-tunes a causal LM with TRL's ``SFTTrainer`` on the ``prompt`` /
``completion`` records of a snapshot (clinician demonstrations and corrections,
``clinalign.preference.snapshots``), optionally through a LoRA adapter merged at save.

- Each record is TRL's conversational prompt-completion form (user = prompt, assistant =
  completion), rendered by the tokenizer's chat template: the model learns the exact
  format the generation service prompts it with.
- The loss covers the completion tokens only: TRL 1.16's ``completion_only_loss`` (its
  default for prompt-completion data, set explicitly here) masks the prompt. Its
  ``assistant_only_loss`` would need ``{% generation %}`` markers in the chat template,
  which the project's template does not have.
- With ``checkpoint_dir`` the Trainer checkpoints there every ``checkpoint_steps`` steps;
  ``resume_from`` (one such ``checkpoint-<step>`` directory) continues a stopped run where
  its checkpoint left it: weights, optimiser, scheduler, RNG states and data position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, set_seed
from trl import SFTConfig, SFTTrainer

from clinalign.common.artefacts import LoraSettings, ProgressFn
from clinalign.common.errors import InvalidArgument
from clinalign.trainer.methods import policy_training

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTHyperparameters(policy_training.PolicyHyperparameters):
    """Everything besides the data and the base model that determines the SFT model."""

    learning_rate: float = 2e-5


def sft_examples(records: Sequence[Mapping[str, Any]], split: str) -> list[dict[str, Any]]:
    """The SFT records of one split in TRL's conversational prompt-completion form. A
    record without ``split`` (the export of one split) counts as training data."""
    out = []
    for r in records:
        if "completion" not in r or r.get("split", "train") != split:
            continue
        prompt, completion = policy_training.conversation(str(r["prompt"]), str(r["completion"]))
        out.append({"prompt": prompt, "completion": completion})
    return out


def sft_trainer(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    hyper: SFTHyperparameters,
    scratch: str,
    lora: LoraSettings | None = None,
    callback: policy_training.Progress | None = None,
    checkpoints: bool = False,
) -> SFTTrainer:
    """TRL's trainer as ``train_sft`` configures it, writing into ``scratch`` (its
    checkpoints too, with ``checkpoints``). TRL 1.16 applies ``completion_only_loss`` while
    tokenising: the prompt's ``labels`` are -100 (there is no ``completion_mask`` column),
    and the completion keeps the template's closing EOS."""
    args = SFTConfig(
        **policy_training.trainer_arguments(hyper, scratch, checkpoints=checkpoints),
        completion_only_loss=True,
        packing=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[callback] if callback else None,
        peft_config=policy_training.lora_config(**asdict(lora)) if lora else None,
    )
    # Progress goes to ``progress`` and the manifest; Trainer would print every log.
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_sft(
    records: Sequence[Mapping[str, Any]],
    snapshot_hash: str,
    base_model: Path,
    out_dir: Path,
    hyper: SFTHyperparameters | None = None,
    *,
    lora: LoraSettings | None = None,
    parent_version: str = "",
    snapshot_hash_source: str = "manifest",
    progress: ProgressFn | None = None,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Train on the snapshot's ``train`` split of SFT records, write the model directory
    ``out_dir`` (which must not exist or be empty) and return its manifest. Checkpoints go
    to ``checkpoint_dir`` (none without it); ``resume_from`` continues from a checkpoint."""
    started = time.monotonic()
    hyper = hyper or SFTHyperparameters()
    hyper.validate()
    base_model, out_dir = policy_training.check_paths(base_model, out_dir)
    resume = policy_training.check_resume(resume_from)
    train_rows = sft_examples(records, "train")
    if not train_rows:
        raise InvalidArgument(
            "snapshot", "holds no SFT records (demonstrations or corrections) in its train split"
        )

    # -- model ---------------------------------------------------------------------------
    set_seed(hyper.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)

    # -- trainer -------------------------------------------------------------------------
    callback = policy_training.Progress(progress)
    with policy_training.trainer_output_dir(checkpoint_dir, "clinalign-sft-") as scratch:
        trainer = sft_trainer(
            model, tokenizer, train_rows, hyper, scratch, lora, callback, checkpoint_dir is not None
        )
        summary = trainer.train(resume_from_checkpoint=resume)
    trained: Any = trainer.model
    if lora is not None:
        trained = trained.merge_and_unload()
    trained.eval()

    metrics = {
        "train_examples": float(len(train_rows)),
        **policy_training.loss_metrics(summary, callback),
    }
    manifest = policy_training.policy_manifest(
        method={
            "name": "sft",
            "loss": "token NLL on the completion only (TRL SFTTrainer, completion_only_loss)",
            "format": "tokenizer chat template: user = prompt, assistant = completion",
        },
        hyper=hyper,
        lora=lora,
        metrics=metrics,
        callback=callback,
        lineage={
            "snapshot_hash": snapshot_hash,
            "snapshot_hash_source": snapshot_hash_source,
            "base_model": str(base_model),
            "parent_version": parent_version,
        },
        started=started,
    )
    policy_training.save_policy(trained, tokenizer, manifest, out_dir)
    log.info("sft policy trained", extra={"fields": {"path": str(out_dir), **metrics}})
    return manifest
