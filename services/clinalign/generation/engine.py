"""The local backend: a Hugging Face causal LM served in this process.

This first version runs one request at a time in a worker thread behind a bounded
admission count; the dynamic-batching scheduler of the generation issue replaces
``_generate_blocking`` without changing this interface.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from clinalign.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from clinalign.common.hashing import weights_hash
from clinalign.generation.params import Sampling

log = logging.getLogger("clinalign.generation.engine")

EOS, LENGTH, STOP = "eos", "length", "stop"


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    path: Path
    weights_hash: str


@dataclass(frozen=True)
class Generated:
    text: str
    finish_reason: str  # eos | length | stop
    prompt_tokens: int
    completion_tokens: int
    model: LoadedModel
    queue_s: float
    duration_s: float


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class LocalEngine:
    def __init__(self, path: Path, name: str, version: str, device: str, max_queue: int) -> None:
        self.path = path
        self.name = name
        self.version = version
        self.device = _pick_device(device)
        self.max_queue = max_queue
        self._waiting = 0
        self._lock = threading.Lock()
        self.model: Any = None
        self.tokenizer: Any = None
        self.loaded: LoadedModel | None = None
        self.context_tokens = 0

    def load(self) -> LoadedModel:
        if not (self.path / "config.json").is_file():
            raise FailedPrecondition(
                f"no model at {self.path}; run `clinalign bootstrap` or set "
                "CLINALIGN_GENERATION_MODEL_PATH"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        self.model.to(self.device).eval()
        self.context_tokens = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.loaded = LoadedModel(self.name, self.version, self.path, weights_hash(self.path))
        log.info(
            "model loaded",
            extra={"fields": {"model_version": self.version, "device": self.device.type}},
        )
        return self.loaded

    def render(self, prompt: str) -> str:
        """The prompt as the model was trained to see it (its chat template, if any)."""
        if getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
            )
        return prompt

    async def generate(self, prompt: str, sampling: Sampling) -> Generated:
        if self.loaded is None:
            raise FailedPrecondition("the model is still loading")
        if self._waiting >= self.max_queue:
            raise ResourceExhausted(
                f"generation queue is full ({self.max_queue} requests); retry with backoff"
            )
        self._waiting += 1
        enqueued = time.perf_counter()
        try:
            return await asyncio.to_thread(self._generate_blocking, prompt, sampling, enqueued)
        finally:
            self._waiting -= 1

    def _generate_blocking(self, prompt: str, sampling: Sampling, enqueued: float) -> Generated:
        with self._lock:
            started = time.perf_counter()
            ids = self.tokenizer(self.render(prompt), return_tensors="pt").input_ids
            if ids.shape[1] + sampling.max_new_tokens > self.context_tokens:
                raise InvalidArgument(
                    "input.prompt",
                    f"{ids.shape[1]} prompt tokens + max_new_tokens {sampling.max_new_tokens} "
                    f"exceed the model's context of {self.context_tokens} tokens",
                )
            generator_kwargs: dict[str, Any] = {
                "max_new_tokens": sampling.max_new_tokens,
                "do_sample": not sampling.greedy,
                "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                "eos_token_id": self.tokenizer.eos_token_id,
            }
            if not sampling.greedy:
                generator_kwargs.update(
                    temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k
                )
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with torch.inference_mode():
                out = self.model.generate(ids.to(self.device), **generator_kwargs)
            new = out[0, ids.shape[1] :].tolist()
            finish = LENGTH
            if new and new[-1] == self.tokenizer.eos_token_id:
                new, finish = new[:-1], EOS
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            for stop in sampling.stop:
                cut = text.find(stop)
                if cut >= 0:
                    text, finish = text[:cut], STOP
            assert self.loaded is not None
            return Generated(
                text=text,
                finish_reason=finish,
                prompt_tokens=int(ids.shape[1]),
                completion_tokens=len(new),
                model=self.loaded,
                queue_s=started - enqueued,
                duration_s=time.perf_counter() - enqueued,
            )
