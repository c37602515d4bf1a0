"""What the trainer and the reward service agree on about a cost model (issue 21): its
labels, how a harm record becomes its targets, and how it reads a (prompt, response).

A cost model is a sequence classifier with one sigmoid output per label, read at the same
token as the reward model (``reward_format.reward_text``: the chat template ending in
EOS):

- ``harm``: the answer has a fault a clinician judged to matter: an error annotation or
  confirmed flag of severity moderate, high or critical, or of no stated severity. Its
  probability is the model's one scalar **cost** in [0, 1], what the reward service
  returns beside the reward and what a cost-constrained PPO keeps within its budget.
- one label per category of the clinical error taxonomy (``CATEGORIES``, as the preference
  store spells them): the answer carries an annotation of that category, whatever its
  severity.

A harm record (a snapshot's ``harm`` export) with no category is a clean answer: a
negative for every label. The directory a cost-model job writes holds ``COST_FILE`` with
these labels in output order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from clinalign.common.reward_format import reward_text

HARM = "harm"
CATEGORIES = (
    "factual_error",
    "unsafe_advice",
    "omission",
    "hallucinated_reference",
    "inappropriate_certainty",
    "bias",
    "privacy_leak",
)
LABELS = (HARM, *CATEGORIES)
# severities that make a fault harm; "low" (cosmetic or stylistic) does not
HARMFUL_SEVERITIES = frozenset({"", "moderate", "high", "critical"})
# A cost-model directory's label file: {"labels": [...], "cost_label": "harm"}.
COST_FILE = "clinalign_cost.json"


def targets(record: Mapping[str, Any]) -> list[float]:
    """The multi-hot targets of one harm record, in ``LABELS`` order. A record's severity
    is the highest among its annotations ("" when none stated one)."""
    categories = set(record.get("categories") or ())
    unknown = categories - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown error categories {sorted(unknown)}")
    harmful = bool(categories) and str(record.get("severity", "")) in HARMFUL_SEVERITIES
    return [float(harmful), *(float(c in categories) for c in CATEGORIES)]


@torch.inference_mode()
def probabilities(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
) -> np.ndarray:
    """P(label) for (prompt, response) pairs: shape [N, len(LABELS)], the sigmoid of the
    model's logits. Inputs longer than ``max_length`` lose their oldest tokens, as the
    reward model's do."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    out: list[np.ndarray] = []
    try:
        for start in range(0, len(pairs), batch_size):
            texts = [reward_text(tokenizer, p, r) for p, r in pairs[start : start + batch_size]]
            batch = tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
            ).to(device)
            out.append(torch.sigmoid(model(**batch).logits.float()).cpu().numpy())
    finally:
        tokenizer.truncation_side = side
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, len(LABELS)), dtype=np.float32)
