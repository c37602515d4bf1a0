"""Reward-model training: a preference snapshot in, a scoring-ready model directory out.

``train_reward_model`` fits a sequence-classification reward model with TRL's
``RewardTrainer`` (Bradley-Terry loss on chosen/rejected), optionally through a LoRA
adapter, starting from the policy's base model so that the tokenizer is the policy's.
The directory it writes is what the reward service loads: full weights, the tokenizer,
``clinalign_reward.json`` (the normalisation) and ``clinalign_manifest.json`` (lineage, in
the keys the model registry reads).

Details, each from the RLHF literature and each recorded in the manifest:

- Inputs are formatted exactly as the scorer formats them (``formatting.reward_ids``):
  the chat template over user and assistant messages, ending in EOS, where the reward is
  read (the last non-padding token). Pairs longer than ``max_length`` are left out (TRL's
  filter) and counted.
- Ties are kept, as soft labels: a tie is the target P(chosen ≻ rejected) = 0.5, whose
  loss -½(log sigmoid(Δ) + log sigmoid(-Δ)) pulls the two rewards together
  (``bt.bt_loss``). Dropping ties throws away the only evidence that two answers are
  equally good; feeding them in both orders gives each tie twice a label's weight.
  Snapshots cut with ``tie_handling=drop`` simply contain none.
- The reward head starts at N(0, 1/(d_model+1)) (``bt.head_init_std``).
- ``base_model`` may instead be a reward-model directory this function wrote: training
  then continues that model, head included, on the snapshot (the retraining loop's
  warm start: the new model starts where the served one is, so new data moves it rather
  than a fresh seed's noise). Its reference policy is the one the continued model was
  normalised on (``reference_policy`` in its manifest), so the two models' scores are on
  one scale.
- The normalisation (module ``normalisation``) is the mean and std of the trained
  model's raw rewards over responses the reference policy (the base model, or the
  continued model's) samples for up to ``norm_prompts`` training prompts, at the
  temperature PPO samples at; the reward service subtracts and divides by them, so PPO
  starts from rewards of mean 0 and std 1 (Ziegler et al. 2019, lm-human-preferences
  ``train_reward.py``). Samples of the policy, not the labelled responses, because they
  are the distribution PPO will score.
- With LoRA the adapter is merged into the weights at save time: the output is an
  ordinary full model that the scorer loads like any other, and the adapter's rank is a
  training detail, not a serving one.
- With ``checkpoint_dir`` the Trainer checkpoints there every ``checkpoint_steps`` steps
  (weights, optimiser, scheduler, RNG states, data position; the latest is kept);
  ``resume_from``, one such ``checkpoint-<step>`` directory, continues a stopped run.
  The normalisation and held-out accuracy are computed after training either way.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PrinterCallback,
    set_seed,
)
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference, suppress_seqcls_warning

from clinalign.common.artefacts import MANIFEST_NAME, NORMALISATION_FILE, REWARD, LoraSettings
from clinalign.common.errors import InvalidArgument
from clinalign.common.reward_format import (
    Pair,
    pair_deltas,
    preference_pairs,
    reward_ids,
)
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
from clinalign.trainer.methods.reward_model import bt
from clinalign.trainer.methods.reward_model.normalisation import compute_normalisation
from clinalign.trainer.methods.reward_model.normalisation import (
    reference_responses as reference_responses,  # importable here, as before
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RewardHyperparameters:
    """Everything besides the data and the base model that determines the trained model."""

    epochs: float = 1.0
    learning_rate: float = 1e-5
    batch_size: int = 8  # pairs per optimiser step and device (each pair is two sequences)
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"
    max_length: int = 1024  # tokens of a formatted (prompt, response); longer pairs are left out
    seed: int = 0
    # Llama 2's margin (Touvron et al. 2023, eq. 2): Δ must exceed scale * label strength.
    margin_scale: float = 0.0
    # Eisenstein et al. 2023, eq. 2 (TRL's center_rewards_coefficient); None turns it off.
    center_rewards_coefficient: float | None = None
    # Recompute activations in the backward pass (gradient checkpointing): saves memory on
    # large models for ~20 % more time.
    activation_checkpointing: bool = False
    bf16: bool | None = None  # None: bf16 on a CUDA device that supports it, fp32 elsewhere
    # Normalisation: reference-policy samples for this many training prompts.
    norm_prompts: int = 64
    norm_max_new_tokens: int = 64
    norm_temperature: float = 1.0  # the temperature PPO samples at
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
            "norm_prompts": self.norm_prompts,
            "norm_max_new_tokens": self.norm_max_new_tokens,
            "norm_temperature": self.norm_temperature,
            "eval_batch_size": self.eval_batch_size,
            "checkpoint_steps": self.checkpoint_steps,
        }
        for name, value in positive.items():
            if not value > 0:
                raise InvalidArgument(name, f"must be positive, got {value}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InvalidArgument("warmup_ratio", "must be in [0, 1)")
        if self.margin_scale < 0:
            raise InvalidArgument("margin_scale", "must be 0 (off) or positive")


# -- TRL adaptations --------------------------------------------------------------------


@dataclass
class _SoftLabelCollator(DataCollatorForPreference):
    """TRL's collator (chosen rows, then rejected rows, right-padded) plus the soft target
    of each pair, which TRL's collator does not carry."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        batch["target"] = torch.tensor([e["target"] for e in examples], dtype=torch.float)
        return batch


class _SoftLabelRewardTrainer(RewardTrainer):
    """TRL 1.16's ``RewardTrainer`` with soft Bradley-Terry targets.

    TRL's loss is -log sigmoid(Δ - margin): it can only say "chosen is better", so a tie would
    have to be dropped or fed twice. This subclass keeps TRL's forward pass, metrics and
    centring term and replaces only the likelihood term by ``bt.bt_loss`` with the pair's
    target (1 for a label, 0.5 for a tie), which equals TRL's loss when every target is 1.
    """

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            columns = ["chosen_ids", "rejected_ids", "margin", "target"]
            self._signature_columns = columns  # type: ignore[assignment]  # declared None

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        b_target = inputs.pop("target")  # (B,)
        _, outputs = super().compute_loss(model, inputs, return_outputs=True)
        b_reward_chosen, b_reward_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = bt.bt_loss(b_reward_chosen, b_reward_rejected, b_target, inputs.get("margin"))
        coefficient = cast(RewardConfig, self.args).center_rewards_coefficient
        if coefficient is not None:
            loss = loss + coefficient * bt.centring_penalty(b_reward_chosen, b_reward_rejected)
        return (loss, outputs) if return_outputs else loss


# -- training ---------------------------------------------------------------------------


def train_reward_model(
    records: Sequence[Mapping[str, Any]],
    snapshot_hash: str,
    base_model: Path,
    out_dir: Path,
    hyper: RewardHyperparameters | None = None,
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
    manifest. Deterministic given ``hyper.seed`` on a given device and library versions.
    Checkpoints go to ``checkpoint_dir`` (none without it); ``resume_from`` continues from
    a checkpoint."""
    started = time.monotonic()
    hyper = hyper or RewardHyperparameters()
    hyper.validate()
    base_model, out_dir = Path(base_model).resolve(), Path(out_dir)
    if not (base_model / "config.json").is_file():
        raise InvalidArgument("base_model", f"{base_model} is not a Hugging Face model directory")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InvalidArgument("out", f"{out_dir} exists and is not empty; choose a new directory")
    train_pairs, eval_pairs = preference_pairs(records, "train"), preference_pairs(records, "eval")
    resume = check_resume(resume_from)
    if not train_pairs:
        raise InvalidArgument("snapshot", "holds no preference pairs in its train split")

    # -- model: the base model with a small fresh reward head, or a reward model --------
    tokenizer, model, reference, continued = _load_model(base_model, hyper)

    # -- data: token ids exactly as the scorer makes them --------------------------------
    rows, kept = _training_rows(tokenizer, train_pairs, hyper)

    # -- trainer --------------------------------------------------------------------------
    callback = Progress(progress)
    trained, summary = _fit(model, tokenizer, rows, hyper, lora, callback, checkpoint_dir, resume)

    # -- normalisation and held-out accuracy ---------------------------------------------
    normalisation = compute_normalisation(trained, tokenizer, reference, train_pairs, hyper)
    metrics = {
        **_train_metrics(train_pairs, kept, summary, callback),
        **_eval_accuracy(trained, tokenizer, eval_pairs, hyper),
    }

    # -- save: full weights, tokenizer, normalisation, manifest --------------------------
    manifest: dict[str, Any] = {
        "kind": REWARD,
        "format_version": FORMAT_VERSION,
        "snapshot_hash": snapshot_hash,
        "snapshot_hash_source": snapshot_hash_source,  # "manifest" or "file_sha256"
        "base_model": str(base_model),
        "reference_policy": str(reference),
        "parent_version": parent_version,
        "seed": hyper.seed,
        "config": {"hyperparameters": asdict(hyper), "lora": asdict(lora) if lora else None},
        "method": _method(model, continued, lora),
        "normalisation": normalisation,
        "metrics": metrics,
        "loss_curve": [[s, round(v, 6)] for s, v in callback.loss_curve],
        "code_version": code_version(),
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - started, 2),
    }
    write_model_dir(
        trained, tokenizer, out_dir, {NORMALISATION_FILE: normalisation, MANIFEST_NAME: manifest}
    )
    log.info(
        "reward model trained",
        extra={"fields": {"path": str(out_dir), **{k: metrics[k] for k in sorted(metrics)}}},
    )
    return manifest


def _load_model(base_model: Path, hyper: RewardHyperparameters) -> tuple[Any, Any, Path, bool]:
    """(tokenizer, model, reference policy, continued): the base model with a fresh reward
    head (``_init_reward_head``), or, for a reward-model directory, that model, head
    included, with the reference policy it was normalised on."""
    continued_from = continued_reference_policy(base_model)
    set_seed(hyper.seed)  # before loading: from_pretrained draws the head's first weights
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    with suppress_seqcls_warning():  # the missing head and unused LM head are expected
        model = AutoModelForSequenceClassification.from_pretrained(
            base_model, num_labels=1, dtype=torch.float32
        )
    if continued_from is None:
        _init_reward_head(model, hyper.seed)
    return tokenizer, model, continued_from or base_model, continued_from is not None


def _training_rows(
    tokenizer: Any, pairs: Sequence[Pair], hyper: RewardHyperparameters
) -> tuple[list[dict[str, Any]], int]:
    """(the training rows, how many fit in ``max_length``): TRL filters out the rest;
    refuses a snapshot none of whose pairs fits."""
    rows = _dataset_rows(tokenizer, pairs, hyper)
    kept = sum(
        len(r["chosen_ids"]) <= hyper.max_length and len(r["rejected_ids"]) <= hyper.max_length
        for r in rows
    )
    if kept == 0:
        raise InvalidArgument(
            "max_length", f"every training pair is longer than {hyper.max_length} tokens"
        )
    return rows, kept


def _fit(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    hyper: RewardHyperparameters,
    lora: LoraSettings | None,
    callback: Progress,
    checkpoint_dir: Path | None,
    resume: str | None,
) -> tuple[Any, Any]:
    """(trained model, LoRA merged and in eval mode; TRL's training summary): the soft-label
    ``RewardTrainer`` over ``rows``, checkpointing to ``checkpoint_dir`` when given."""
    with trainer_output_dir(checkpoint_dir, "clinalign-rm-") as scratch:
        trainer = _SoftLabelRewardTrainer(
            model=model,
            args=_reward_config(hyper, scratch, checkpoints=checkpoint_dir is not None),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            data_collator=_SoftLabelCollator(pad_token_id=tokenizer.pad_token_id),
            callbacks=[callback],
            peft_config=seq_cls_lora_config(lora) if lora else None,
        )
        # Progress goes to ``progress`` and the manifest; Trainer would print every log.
        trainer.remove_callback(PrinterCallback)
        summary = trainer.train(resume_from_checkpoint=resume)
    trained: Any = trainer.model
    if lora is not None:
        trained = trained.merge_and_unload()
    trained.eval()
    return trained, summary


def _train_metrics(
    pairs: Sequence[Pair], kept: int, summary: Any, callback: Progress
) -> dict[str, float]:
    """Pair counts (all, fitting ``max_length``, ties), steps and the loss curve's ends."""
    return {
        "train_pairs": float(len(pairs)),
        "train_pairs_used": float(kept),
        "train_ties": float(sum(p.tie for p in pairs)),
        "train_steps": float(summary.global_step),
        "train_loss": float(summary.training_loss),
        "train_loss_first": callback.loss_curve[0][1] if callback.loss_curve else float("nan"),
        "train_loss_last": callback.loss_curve[-1][1] if callback.loss_curve else float("nan"),
    }


def _method(model: Any, continued: bool, lora: LoraSettings | None) -> dict[str, Any]:
    """The manifest's ``method``: loss, reward token, initialisation and LoRA."""
    return {
        "loss": "Bradley-Terry (TRL RewardTrainer), ties as soft label 0.5",
        "reward_token": "last non-padding token (EOS of the chat template)",
        "init": "continues the reward model base_model, head included"
        if continued
        else "base_model with a fresh head",
        "head_init_std": None if continued else bt.head_init_std(_hidden_size(model)),
        "lora": "merged into full weights" if lora else None,
    }


def continued_reference_policy(base_model: Path) -> Path | None:
    """None for a policy base model; for a reward-model directory (one with a
    normalisation file), the reference policy it was normalised on, which the continued
    model is normalised on too. Refuses a reward model whose reference policy is gone."""
    if not (base_model / NORMALISATION_FILE).is_file():
        return None
    try:
        manifest = json.loads((base_model / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    recorded = str(manifest.get("reference_policy") or manifest.get("base_model") or "")
    reference = Path(recorded) if recorded else None
    if reference is None or not (reference / "config.json").is_file():
        raise InvalidArgument(
            "base_model",
            f"{base_model} is a reward model whose reference policy "
            f"({recorded or 'none recorded in its manifest'}) is not a model directory here; "
            "continuing it needs that policy to normalise the new scores on",
        )
    return reference


def _dataset_rows(
    tokenizer: Any, pairs: Sequence[Pair], hyper: RewardHyperparameters
) -> list[dict[str, Any]]:
    """TRL's tokenised preference format (``chosen_ids``, ``rejected_ids``, optional
    ``margin``) plus each pair's soft ``target``."""
    rows = []
    for p in pairs:
        row: dict[str, Any] = {
            "chosen_ids": reward_ids(tokenizer, p.prompt, p.chosen),
            "rejected_ids": reward_ids(tokenizer, p.prompt, p.rejected),
            "target": bt.TIE_TARGET if p.tie else 1.0,
        }
        if hyper.margin_scale > 0:
            row["margin"] = 0.0 if p.tie else hyper.margin_scale * p.strength
        rows.append(row)
    return rows


def _reward_config(
    hyper: RewardHyperparameters, output_dir: str, *, checkpoints: bool = False
) -> RewardConfig:
    return RewardConfig(
        output_dir=output_dir,
        num_train_epochs=hyper.epochs,
        per_device_train_batch_size=hyper.batch_size,
        gradient_accumulation_steps=hyper.gradient_accumulation_steps,
        learning_rate=hyper.learning_rate,
        weight_decay=hyper.weight_decay,
        warmup_steps=hyper.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        lr_scheduler_type=hyper.lr_scheduler,
        max_length=hyper.max_length,
        center_rewards_coefficient=hyper.center_rewards_coefficient,
        # transformers 5 renamed gradient_checkpointing; TRL still sets the old name (True by
        # default) unless the new one is given.
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
    )


def _hidden_size(model: Any) -> int:
    return int(model.config.get_text_config().hidden_size)


def _init_reward_head(model: Any, seed: int) -> None:
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise InvalidArgument(
            "base_model", f"{type(model).__name__} has no linear 'score' head to initialise"
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = torch.randn(head.weight.shape, generator=generator)
        head.weight.copy_(weight * bt.head_init_std(_hidden_size(model)))
        if head.bias is not None:
            head.bias.zero_()


def _eval_accuracy(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], hyper: RewardHyperparameters
) -> dict[str, float]:
    labelled = [p for p in pairs if not p.tie]
    if not labelled:
        return {"eval_pairs": 0.0}
    b_delta, _ = pair_deltas(model, tokenizer, labelled, batch_size=hyper.eval_batch_size)
    return {
        "eval_pairs": float(len(labelled)),
        "eval_accuracy": float(bt.pairwise_correct(b_delta).mean()),
    }
