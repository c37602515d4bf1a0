"""Scoring with a sequence-classification reward model.

The text of a pair is :func:`clinalign.common.reward_format.reward_text`, the one shared with
training. The score is the classification head's single logit at the last non-padding
token (the Hugging Face sequence-classification models pool there), then the per-model
normalisation stored with the model in ``clinalign_reward.json`` (mean and std over the
reference policy's responses; identity when absent). A cost model (``kind`` "cost", a
directory with ``clinalign_cost.json``) is read the same way; its score is the sigmoid of
its first logit, the probability of harm (``clinalign.common.cost_format``).

Scoring is two steps so that the service can batch across callers: :meth:`Scorer.encode`
validates and tokenises one caller's pairs (any thread), and :meth:`Scorer.forward` scores
rows of token ids from any number of callers in one pass (the batcher's worker thread).
:meth:`Scorer.score` does both, for in-process use.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clinalign.common.artefacts import COST, NORMALISATION_FILE, REWARD
from clinalign.common.cost_format import COST_FILE
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.hashing import weights_hash
from clinalign.common.reward_format import reward_text

DEFAULT_NAME = "clinalign-reward"


@dataclass(frozen=True)
class Scored:
    score: float
    raw_score: float
    truncated: bool


@dataclass(frozen=True)
class Encoded:
    """One pair's token ids, at most the model's context long."""

    ids: list[int]
    truncated: bool


@dataclass(frozen=True)
class RewardModelInfo:
    name: str
    version: str
    path: Path
    weights_hash: str
    mean: float
    std: float


class Scorer:
    def __init__(
        self,
        path: Path,
        version: str,
        device: str,
        *,
        name: str = DEFAULT_NAME,
        digest: str = "",
        kind: str = REWARD,
    ) -> None:
        if not (path / "config.json").is_file():
            raise FailedPrecondition(f"no {kind} model at {path}")
        labels = 1
        if kind == COST:
            if not (path / COST_FILE).is_file():
                raise FailedPrecondition(f"{path} is not a cost model: it has no {COST_FILE}")
            labels = len(json.loads((path / COST_FILE).read_text())["labels"])
        self.kind = kind
        self.device = torch.device(
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.tokenizer.truncation_side = "left"  # keep the response, drop the oldest prompt
        self.model: Any = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=labels
        )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if self.model.config.pad_token_id is None:
            raise FailedPrecondition(f"the reward model at {path} has no padding token")
        self.pad_id = int(self.model.config.pad_token_id)
        self.model.to(self.device).eval()
        self.context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        norm: dict[str, float] = {}
        if (path / NORMALISATION_FILE).is_file():
            norm = json.loads((path / NORMALISATION_FILE).read_text())
        self.info = RewardModelInfo(
            name=name,
            version=version or path.name,
            path=path,
            weights_hash=digest or weights_hash(path),
            mean=float(norm.get("mean", 0.0)),
            std=float(norm.get("std", 1.0)) or 1.0,
        )
        # A fast tokenizer changes its Rust state when truncation is switched on and off
        # and refuses concurrent use meanwhile ("Already borrowed"), so calls are serialised.
        self._tokenizer_lock = threading.Lock()

    def encode(self, pairs: Sequence[tuple[str, str]], truncate: bool) -> list[Encoded]:
        """Token ids of each pair. A pair longer than the context is INVALID_ARGUMENT naming
        ``items[i]``, or with truncate loses the oldest tokens of its prompt."""
        texts = [reward_text(self.tokenizer, p, r) for p, r in pairs]
        with self._tokenizer_lock:
            rows: list[list[int]] = self.tokenizer(texts).input_ids
            too_long = [i for i, ids in enumerate(rows) if len(ids) > self.context]
            if too_long and not truncate:
                i = too_long[0]
                raise InvalidArgument(
                    f"items[{i}]",
                    f"is {len(rows[i])} tokens; the reward model's context is {self.context}. "
                    "Shorten it or set truncate=true",
                )
            cut: list[list[int]] = []
            if too_long:
                cut = self.tokenizer(
                    [texts[i] for i in too_long], truncation=True, max_length=self.context
                ).input_ids
        for i, ids in zip(too_long, cut, strict=True):
            rows[i] = ids
        long = set(too_long)
        return [Encoded(list(ids), i in long) for i, ids in enumerate(rows)]

    def forward(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """Raw rewards (a cost model's harm logit) of rows of token ids, in one forward pass
        over right-padded rows."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        padded = any(len(r) != width for r in rows)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(self.device),
                # Without padding the model needs no mask, and takes a faster path.
                attention_mask=mask.to(self.device) if padded else None,
            )
            return [float(x) for x in out.logits[:, 0].float().cpu().tolist()]

    def normalise(self, raw: float) -> float:
        """The served score: the normalised reward, or a cost model's probability of harm."""
        if self.kind == COST:
            return _sigmoid(raw)
        return (raw - self.info.mean) / self.info.std

    def score(self, pairs: Sequence[tuple[str, str]], truncate: bool) -> list[Scored]:
        """Encodes and scores pairs in one forward pass (in process, no batching across
        callers)."""
        encoded = self.encode(pairs, truncate)
        raw = self.forward([e.ids for e in encoded])
        return [
            Scored(self.normalise(r), r, e.truncated) for r, e in zip(raw, encoded, strict=True)
        ]


def _sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
