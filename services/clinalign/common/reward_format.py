"""The one way a (prompt, response) reaches a reward model, shared by training, evaluation
and the scoring service so that a model is scored on exactly the text it was trained on;
and the preference pairs of a snapshot export, as training and evaluation read them.

The text is the tokenizer's chat template over a user and an assistant message (for
ClinAlign models, ``<|user|>\\n{prompt}\\n<|assistant|>\\n{response}</s>``), or plain
concatenation for a tokenizer without one; the token ids are the tokenizer's ordinary
encoding of that text. The reward is the classification head's logit at the last
non-padding token, which Hugging Face sequence-classification models pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Pair:
    """One preference record of a snapshot (``snapshots.build``'s preference format)."""

    prompt: str
    chosen: str
    rejected: str
    tie: bool = False
    strength: float = 1.0
    prompt_id: str = ""
    chosen_id: str = ""
    rejected_id: str = ""
    annotator_id: str = ""
    tags: tuple[str, ...] = ()
    rejected_error_categories: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Pair:
        return cls(
            prompt=str(r["prompt"]),
            chosen=str(r["chosen"]),
            rejected=str(r["rejected"]),
            tie=bool(r.get("tie", False)),
            strength=float(r.get("strength", 1.0)),
            prompt_id=str(r.get("prompt_id", "")),
            chosen_id=str(r.get("chosen_id", "")),
            rejected_id=str(r.get("rejected_id", "")),
            annotator_id=str(r.get("annotator_id", "")),
            tags=tuple(r.get("tags") or ()),
            rejected_error_categories=tuple(r.get("rejected_error_categories") or ()),
        )


def preference_pairs(records: Sequence[Mapping[str, Any]], split: str) -> list[Pair]:
    """The preference records of one split. A record without a ``split`` column (the
    export of a single split) counts as training data; SFT records are skipped."""
    return [
        Pair.from_record(r)
        for r in records
        if "chosen" in r and "rejected" in r and r.get("split", "train") == split
    ]


def reward_text(tokenizer: Any, prompt: str, response: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(
                [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": response},
                ],
                tokenize=False,
            )
        )
    return prompt + response


def reward_ids(tokenizer: Any, prompt: str, response: str) -> list[int]:
    """Token ids as the scorer makes them: ``tokenizer(text)`` with its default special
    tokens, so a tokenizer that adds BOS adds it in training and serving alike."""
    return list(tokenizer(reward_text(tokenizer, prompt, response)).input_ids)


@torch.inference_mode()
def head_logits(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
) -> tuple[np.ndarray, int]:
    """A sequence classifier's logits for (prompt, response) pairs, shape [N, labels], read
    as the scorer reads them, and how many inputs were longer than ``max_length`` and lost
    their oldest tokens (the scorer truncates on the left too, keeping the response)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    out: list[np.ndarray] = []
    truncated = 0
    try:
        for start in range(0, len(pairs), batch_size):
            texts = [reward_text(tokenizer, p, r) for p, r in pairs[start : start + batch_size]]
            if max_length is not None:
                truncated += sum(len(ids) > max_length for ids in tokenizer(texts).input_ids)
            batch = tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
            ).to(device)
            out.append(model(**batch).logits.float().cpu().numpy())
    finally:
        tokenizer.truncation_side = side
        model.train(was_training)
    labels = int(getattr(model.config, "num_labels", 1))
    return (np.concatenate(out) if out else np.zeros((0, labels), dtype=np.float32)), truncated


def raw_rewards(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
) -> tuple[list[float], int]:
    """Raw (unnormalised) rewards for (prompt, response) pairs, and how many inputs were
    truncated (``head_logits``)."""
    logits, truncated = head_logits(
        model, tokenizer, pairs, batch_size=batch_size, max_length=max_length
    )
    return [float(x) for x in logits[:, 0]], truncated


def pair_deltas(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
) -> tuple[np.ndarray, int]:
    """Δ = r(chosen) - r(rejected) per pair, shape (B,), and how many of the 2B inputs
    were truncated."""
    chosen, t_chosen = raw_rewards(
        model,
        tokenizer,
        [(p.prompt, p.chosen) for p in pairs],
        batch_size=batch_size,
        max_length=max_length,
    )
    rejected, t_rejected = raw_rewards(
        model,
        tokenizer,
        [(p.prompt, p.rejected) for p in pairs],
        batch_size=batch_size,
        max_length=max_length,
    )
    return np.subtract(chosen, rejected), t_chosen + t_rejected
