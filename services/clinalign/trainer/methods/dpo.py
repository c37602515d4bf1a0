"""Direct preference optimisation: a snapshot's preference pairs in, a policy model
directory out.

``train_dpo`` fits the policy with TRL's ``DPOTrainer`` (Rafailov et al. 2023, Eq. 7:
-log sigmoid(β[log π(y_w|x)/π_ref(y_w|x) - log π(y_l|x)/π_ref(y_l|x)])), optionally
through a LoRA adapter merged at save.

- Pairs are TRL's conversational preference form (user = prompt, assistant = chosen or
  rejected), rendered by the tokenizer's chat template, the format generation serves.
- Ties are dropped: the DPO likelihood has no term for "equally good" (the sigmoid loss
  only says chosen ≻ rejected), and feeding a tie in both orders only pushes both
  log-ratios toward each other at twice a label's weight. The count is in the metrics.
- The reference policy π_ref is the base model: without LoRA TRL loads a frozen copy of
  it (``ref_model=None``); with LoRA it disables the adapter to get it, with no copy.
- β defaults to 0.1, the paper's and TRL's default.
- The held-out metrics are DPO loss and implicit-reward accuracy (the share of eval pairs
  whose chosen answer gets the larger β·log-ratio) on the snapshot's eval split.
- Checkpoints and resuming as in ``clinalign.trainer.methods.sft``.
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
from trl import DPOConfig, DPOTrainer

from clinalign.common.artefacts import LoraSettings, ProgressFn
from clinalign.common.errors import InvalidArgument
from clinalign.trainer.methods import policy_training

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPOHyperparameters(policy_training.PolicyHyperparameters):
    """Everything besides the data and the base model that determines the DPO policy."""

    learning_rate: float = 1e-6  # TRL DPOConfig's default; the DPO paper used 1e-6 too
    beta: float = 0.1  # strength of the KL anchor to the reference policy (β of Eq. 7)
    eval_batch_size: int = 16

    def validate(self) -> None:
        super().validate()
        if not self.beta > 0:
            raise InvalidArgument("beta", f"must be positive, got {self.beta}")
        if not self.eval_batch_size > 0:
            raise InvalidArgument(
                "eval_batch_size", f"must be positive, got {self.eval_batch_size}"
            )


def dpo_examples(
    records: Sequence[Mapping[str, Any]], split: str
) -> tuple[list[dict[str, Any]], int]:
    """(the preference records of one split in TRL's conversational form, ties dropped).
    A record without ``split`` counts as training data; SFT records are skipped."""
    rows, ties = [], 0
    for r in records:
        if "chosen" not in r or "rejected" not in r or r.get("split", "train") != split:
            continue
        if r.get("tie"):
            ties += 1
            continue
        prompt, chosen = policy_training.conversation(str(r["prompt"]), str(r["chosen"]))
        _, rejected = policy_training.conversation(str(r["prompt"]), str(r["rejected"]))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows, ties


def train_dpo(
    records: Sequence[Mapping[str, Any]],
    snapshot_hash: str,
    base_model: Path,
    out_dir: Path,
    hyper: DPOHyperparameters | None = None,
    *,
    lora: LoraSettings | None = None,
    parent_version: str = "",
    snapshot_hash_source: str = "manifest",
    progress: ProgressFn | None = None,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Train on the snapshot's ``train`` split, measure on its ``eval`` split, write the
    model directory ``out_dir`` (which must not exist or be empty) and return its
    manifest. Checkpoints go to ``checkpoint_dir`` (none without it); ``resume_from``
    continues from a checkpoint."""
    started = time.monotonic()
    hyper = hyper or DPOHyperparameters()
    hyper.validate()
    base_model, out_dir = policy_training.check_paths(base_model, out_dir)
    resume = policy_training.check_resume(resume_from)
    train_rows, train_ties = dpo_examples(records, "train")
    eval_rows, _ = dpo_examples(records, "eval")
    if not train_rows:
        raise InvalidArgument("snapshot", "holds no untied preference pairs in its train split")

    # -- model: the policy; TRL makes the reference from the same base ------------------
    set_seed(hyper.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)

    # -- training and held-out evaluation -------------------------------------------------
    callback = policy_training.Progress(progress)
    trained, summary, held_out = _fit(
        model, tokenizer, train_rows, eval_rows, hyper, lora, callback, checkpoint_dir, resume
    )

    # -- manifest and save ----------------------------------------------------------------
    metrics = _metrics(train_rows, train_ties, eval_rows, summary, callback, held_out)
    manifest = policy_training.policy_manifest(
        method={
            "name": "dpo",
            "loss": "sigmoid DPO (Rafailov et al. 2023, Eq. 7; TRL DPOTrainer)",
            "reference": "the base model" + (" (LoRA adapter disabled)" if lora else ""),
            "ties": "dropped",
            "format": "tokenizer chat template: user = prompt, assistant = response",
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
    log.info("dpo policy trained", extra={"fields": {"path": str(out_dir), **metrics}})
    return manifest


def _fit(
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    hyper: DPOHyperparameters,
    lora: LoraSettings | None,
    callback: policy_training.Progress,
    checkpoint_dir: Path | None,
    resume: str | None,
) -> tuple[Any, Any, dict[str, float]]:
    """(trained model, LoRA merged and in eval mode; TRL's training summary; the held-out
    metrics, empty without eval rows): TRL's ``DPOTrainer`` with ``ref_model=None``, so the
    reference is a frozen copy of the base (or, with LoRA, the base with the adapter off)."""
    with policy_training.trainer_output_dir(checkpoint_dir, "clinalign-dpo-") as scratch:
        args = DPOConfig(
            **policy_training.trainer_arguments(
                hyper, scratch, checkpoints=checkpoint_dir is not None
            ),
            beta=hyper.beta,
            per_device_eval_batch_size=hyper.eval_batch_size,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            callbacks=[callback],
            peft_config=policy_training.lora_config(**asdict(lora)) if lora else None,
        )
        # Progress goes to ``progress`` and the manifest; Trainer would print every log.
        trainer.remove_callback(PrinterCallback)
        summary = trainer.train(resume_from_checkpoint=resume)
        held_out = trainer.evaluate() if eval_rows else {}
    trained: Any = trainer.model
    if lora is not None:
        trained = trained.merge_and_unload()
    trained.eval()
    return trained, summary, held_out


def _metrics(
    train_rows: list[dict[str, Any]],
    train_ties: int,
    eval_rows: list[dict[str, Any]],
    summary: Any,
    callback: policy_training.Progress,
    held_out: dict[str, float],
) -> dict[str, float]:
    """The manifest's metrics: pair counts, the loss curve's ends, the last training
    implicit-reward accuracy and the held-out DPO loss, accuracy and margin."""
    metrics = {
        "train_pairs": float(len(train_rows)),
        "train_ties_dropped": float(train_ties),
        **policy_training.loss_metrics(summary, callback),
        "eval_pairs": float(len(eval_rows)),
    }
    if "rewards/accuracies" in callback.last:
        metrics["train_reward_accuracy_last"] = callback.last["rewards/accuracies"]
    if held_out:
        metrics["eval_loss"] = float(held_out["eval_loss"])
        metrics["eval_reward_accuracy"] = float(held_out["eval_rewards/accuracies"])
        metrics["eval_reward_margin"] = float(held_out["eval_rewards/margins"])
    return metrics
