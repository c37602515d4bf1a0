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

from clinalign.common.reward_format import head_logits

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


def probabilities(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
) -> np.ndarray:
    """P(label) for (prompt, response) pairs: shape [N, len(LABELS)], the sigmoid of the
    model's logits, read as the reward model's are (``reward_format.head_logits``)."""
    logits, _ = head_logits(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length)
    return torch.sigmoid(torch.from_numpy(logits)).numpy()  # no overflow at large |x|
