"""Scoring with a sequence-classification reward model.

The score is the classification head's single logit at the last non-padding token (the
Hugging Face sequence-classification models pool there), then the per-model normalisation
stored with the model in ``clinalign_reward.json`` (mean and std over the reference
policy's responses; identity when absent).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.hashing import weights_hash

NORMALISATION_FILE = "clinalign_reward.json"


@dataclass(frozen=True)
class Scored:
    score: float
    raw_score: float
    truncated: bool


@dataclass(frozen=True)
class RewardModelInfo:
    version: str
    path: Path
    weights_hash: str
    mean: float
    std: float


class Scorer:
    def __init__(self, path: Path, version: str, device: str) -> None:
        if not (path / "config.json").is_file():
            raise FailedPrecondition(f"no reward model at {path}")
        self.device = torch.device(
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.tokenizer.truncation_side = "left"  # keep the response, drop the oldest prompt
        self.model: Any = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        self.context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        norm: dict[str, float] = {}
        if (path / NORMALISATION_FILE).is_file():
            norm = json.loads((path / NORMALISATION_FILE).read_text())
        self.info = RewardModelInfo(
            version=version or path.name,
            path=path,
            weights_hash=weights_hash(path),
            mean=float(norm.get("mean", 0.0)),
            std=float(norm.get("std", 1.0)) or 1.0,
        )
        self._lock = threading.Lock()

    def _text(self, prompt: str, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(
                    [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": response},
                    ],
                    tokenize=False,
                )
            )
        return prompt + response

    def score(self, pairs: list[tuple[str, str]], truncate: bool) -> list[Scored]:
        texts = [self._text(p, r) for p, r in pairs]
        lengths = [len(ids) for ids in self.tokenizer(texts).input_ids]
        too_long = [i for i, n in enumerate(lengths) if n > self.context]
        if too_long and not truncate:
            i = too_long[0]
            raise InvalidArgument(
                f"items[{i}]",
                f"is {lengths[i]} tokens; the reward model's context is {self.context}. "
                "Shorten it or set truncate=true",
            )
        with self._lock, torch.inference_mode():
            batch = self.tokenizer(
                texts, return_tensors="pt", padding=True, truncation=True, max_length=self.context
            ).to(self.device)
            raw = self.model(**batch).logits[:, 0].float().cpu().tolist()
        return [
            Scored((r - self.info.mean) / self.info.std, r, lengths[i] > self.context)
            for i, r in enumerate(raw)
        ]
