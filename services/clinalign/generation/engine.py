"""The local backend: a Hugging Face causal LM (optionally a base model plus a LoRA
adapter) served in this process by the continuous-batching :class:`Scheduler`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from clinalign.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from clinalign.common.hashing import weights_hash
from clinalign.common.prompts import render_user_prompt
from clinalign.generation import metrics
from clinalign.generation.backend import Delta, Event, Generated, ModelInfo
from clinalign.generation.params import Sampling
from clinalign.generation.scheduler import Scheduler, Sequence

log = logging.getLogger("clinalign.generation.engine")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_causal_lm(path: Path, adapter: Path | None, device: torch.device) -> tuple[Any, Any]:
    """Tokenizer and eval-mode model; a LoRA adapter is merged into the base weights so
    serving pays nothing for it per token."""
    if not (path / "config.json").is_file():
        raise FailedPrecondition(
            f"no model at {path}; run `clinalign bootstrap` or set CLINALIGN_GENERATION_MODEL_PATH"
        )
    has_own = adapter is not None and (adapter / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(adapter if has_own else path)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file():
            raise FailedPrecondition(f"no LoRA adapter at {adapter} (adapter_config.json missing)")
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    return tokenizer, model


class LocalBackend:
    def __init__(
        self,
        path: Path,
        *,
        name: str,
        version: str,
        device: str,
        max_queue: int,
        max_batch: int,
        adapter: Path | None = None,
        weights_hash: str = "",
    ) -> None:
        self.path = path
        self.adapter = adapter
        self.device = pick_device(device)
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.info = ModelInfo(
            name=name,
            version=version,
            uri=str(adapter or path),
            weights_hash=weights_hash,
            base_model=str(path) if adapter else "",
            adapter_path=str(adapter or ""),
        )
        self.tokenizer: Any = None
        self.context_tokens = 0
        self._scheduler: Scheduler | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    async def start(self) -> ModelInfo:
        self.tokenizer, model = await asyncio.to_thread(
            load_causal_lm, self.path, self.adapter, self.device
        )
        self.context_tokens = int(getattr(model.config, "max_position_embeddings", 2048))
        if not self.info.weights_hash:
            digest = await asyncio.to_thread(weights_hash, self.adapter or self.path)
            self.info = ModelInfo(**{**self.info.__dict__, "weights_hash": digest})
        self._scheduler = Scheduler(
            model,
            self.tokenizer,
            self.info,
            device=self.device,
            max_batch=self.max_batch,
            loop=asyncio.get_running_loop(),
        )
        self._scheduler.start()
        log.info(
            "model loaded",
            extra={"fields": {"model_version": self.info.version, "device": self.device.type}},
        )
        return self.info

    @property
    def queue_depth(self) -> int:
        return self._inflight

    def render(self, prompt: str) -> str:
        """The user message as the model was trained to see it (its chat template)."""
        return render_user_prompt(self.tokenizer, prompt)

    def encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        ids: list[int] = self.tokenizer(self.render(prompt), add_special_tokens=False).input_ids
        if len(ids) + max_new_tokens > self.context_tokens:
            raise InvalidArgument(
                "input.prompt",
                f"{len(ids)} prompt tokens + max_new_tokens {max_new_tokens} exceed the "
                f"model's context of {self.context_tokens} tokens; shorten the prompt or "
                "lower sampling.max_new_tokens",
            )
        return ids

    async def stream(
        self, prompt: str, sampling: Sampling, *, deltas: bool = True
    ) -> AsyncGenerator[Event, None]:
        if self._scheduler is None or self._closing:
            raise FailedPrecondition(f"model version {self.info.version} is not being served")
        if self._inflight >= self.max_queue:
            raise ResourceExhausted(
                f"generation queue is full ({self.max_queue} requests); retry with backoff"
            )
        seq = Sequence(
            self.encode(prompt, sampling.max_new_tokens), sampling, asyncio.Queue(), deltas
        )
        self._inflight += 1
        self._idle.clear()
        metrics.QUEUE_DEPTH.labels(self.info.version).set(self._inflight)
        self._scheduler.submit(seq)
        try:
            while True:
                for event in _coalesced(await seq.events.get(), seq.events):
                    if isinstance(event, BaseException):
                        raise event
                    yield event
                    if isinstance(event, Generated):
                        return
        finally:
            seq.cancelled = True  # no-op when finished; frees the batch slot otherwise
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
            metrics.QUEUE_DEPTH.labels(self.info.version).set(self._inflight)

    async def close(self) -> None:
        self._closing = True
        await self._idle.wait()
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.stop)
            self._scheduler = None


def _coalesced(
    first: Event | BaseException, queue: asyncio.Queue[Event | BaseException]
) -> list[Event | BaseException]:
    """first plus whatever else is already queued, with consecutive deltas merged: a
    consumer that falls behind the decoder gets one message per wake-up, not per token."""
    out = [first]
    while not queue.empty():
        event = queue.get_nowait()
        last = out[-1]
        if isinstance(last, Delta) and isinstance(event, Delta):
            out[-1] = Delta(last.text + event.text, event.completion_tokens)
        else:
            out.append(event)
    return out
