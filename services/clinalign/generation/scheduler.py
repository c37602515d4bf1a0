"""Continuous batching for the local backend.

One worker thread owns the model. Between decode steps it admits waiting requests into
the running batch (iteration-level scheduling, as in Orca (Yu et al., OSDI 2022) and in
TGI's and vLLM's routers): newcomers are prefilled together, their KV cache is left-padded
to the batch's length and concatenated on the batch axis, and finished or cancelled rows
are dropped from it at once, so a short answer never waits for a long one.

Rows are left-padded; each row carries its own position counter, so rotary positions stay
those of the row's real tokens whatever padding a merge adds. Events go back to the asyncio
loop in one callback per step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from clinalign.generation import metrics
from clinalign.generation.backend import EOS, LENGTH, STOP, Delta, Event, Generated, ModelInfo
from clinalign.generation.params import Sampling
from clinalign.generation.sampling import next_tokens

log = logging.getLogger("clinalign.generation.scheduler")

REPLACEMENT = "\ufffd"  # what a tokenizer decodes from an incomplete UTF-8 sequence


@dataclass(eq=False)
class Sequence:
    """One request's state, shared between the asyncio side and the worker thread."""

    prompt_ids: list[int]
    sampling: Sampling
    events: asyncio.Queue[Event | BaseException]
    deltas: bool = True  # stream text as it is decoded; False sends only the result
    admitted: float = field(default_factory=time.perf_counter)
    ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of text already sent as deltas
    started: float = 0.0
    first_token: float = 0.0
    finish: str = ""
    text: str = ""
    cancelled: bool = False  # set by the asyncio side; read by the worker between steps
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.sampling.seed is not None:
            self.generator = torch.Generator().manual_seed(self.sampling.seed)


@dataclass
class _Batch:
    rows: list[Sequence]
    cache: DynamicCache
    mask: torch.Tensor  # [B, L] 1 = real token, 0 = left padding
    padded: bool  # any 0 in mask; without padding the model gets no mask (a faster path)
    positions: torch.Tensor  # [B] position id of each row's next token
    last: torch.Tensor  # [B] each row's latest token, the next step's input
    temperature: torch.Tensor  # [B]
    top_k: torch.Tensor  # [B]
    top_p: torch.Tensor  # [B]


class Scheduler:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        info: ModelInfo,
        *,
        device: torch.device,
        max_batch: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.max_batch = max_batch
        self.loop = loop
        eos = model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        self.eos_ids = frozenset(int(i) for i in ids if i is not None) | {
            int(tokenizer.eos_token_id)
        }
        self.pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self._pending: deque[Sequence] = deque()
        self._cv = threading.Condition()
        self._batch: _Batch | None = None
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"scheduler-{info.version}", daemon=True
        )

    # ---- asyncio side --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        with self._cv:
            self._pending.append(seq)
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()

    @property
    def running(self) -> int:
        batch = self._batch
        return len(batch.rows) if batch else 0

    # ---- worker thread -------------------------------------------------------------------

    def _admit(self) -> list[Sequence]:
        """Waiting requests to prefill now (called under the lock): as many as there are
        free rows. Holding newcomers back to prefill them in larger groups (TGI's
        ``waiting_served_ratio``) gained nothing measurable on the CPU benchmark, and it
        costs time to first token, so admission is immediate."""
        free = self.max_batch - self.running
        return [self._pending.popleft() for _ in range(min(free, len(self._pending)))]

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cv:
                while not self._pending and self._batch is None and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._pending and self._batch is None:
                    return
                admitted = self._admit()
            try:
                with torch.inference_mode():
                    admitted = [s for s in admitted if not s.cancelled]
                    if admitted:
                        self._prefill(admitted)
                    if self._batch is not None:
                        self._decode_step()
            except Exception as exc:  # a fault in the model fails its requests, not the worker
                log.exception("generation step failed")
                rows = (self._batch.rows if self._batch else []) + admitted
                self._batch = None
                self._deliver([(s, exc) for s in rows if not s.finish])

    def _prefill(self, seqs: list[Sequence]) -> None:
        started = time.perf_counter()
        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            s.started = started
            ids[i, width - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids)
            mask[i, width - len(s.prompt_ids) :] = 1
        for s in seqs:
            metrics.QUEUE_TIME.observe(started - s.admitted)
        ids, mask = ids.to(self.device), mask.to(self.device)
        padded = len({len(s.prompt_ids) for s in seqs}) > 1
        cache = DynamicCache()
        out = self.model(
            input_ids=ids,
            attention_mask=mask if padded else None,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        fresh = _Batch(
            rows=seqs,
            cache=cache,
            mask=mask,
            padded=padded,
            positions=mask.sum(-1),
            last=torch.zeros(len(seqs), dtype=torch.long, device=self.device),
            temperature=torch.tensor([s.sampling.temperature for s in seqs], device=self.device),
            top_k=torch.tensor([s.sampling.top_k for s in seqs], device=self.device),
            top_p=torch.tensor([s.sampling.top_p for s in seqs], device=self.device),
        )
        self._advance(fresh, out.logits[:, -1, :])
        self._batch = fresh if self._batch is None else _merge(self._batch, fresh)
        self._evict_finished()

    def _decode_step(self) -> None:
        batch = self._batch
        assert batch is not None
        metrics.BATCH_SIZE.observe(len(batch.rows))
        ones = torch.ones((len(batch.rows), 1), dtype=batch.mask.dtype, device=self.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        out = self.model(
            input_ids=batch.last.unsqueeze(-1),
            attention_mask=batch.mask if batch.padded else None,
            position_ids=batch.positions.unsqueeze(-1),
            cache=batch.cache,
            use_cache=True,
        )
        batch.positions = batch.positions + 1
        self._advance(batch, out.logits[:, -1, :])
        self._evict_finished()

    def _advance(self, batch: _Batch, logits: torch.Tensor) -> None:
        """Picks each row's next token and turns it into text, a finish, or both."""
        tokens = next_tokens(
            logits.float(),
            batch.temperature,
            batch.top_k,
            batch.top_p,
            [s.generator for s in batch.rows],
        )
        batch.last = tokens
        now = time.perf_counter()
        out: list[tuple[Sequence, Event | BaseException]] = []
        for seq, token in zip(batch.rows, tokens.tolist(), strict=True):
            if seq.cancelled:
                seq.finish = "cancelled"
                continue
            if not seq.first_token:
                seq.first_token = now
            if token in self.eos_ids:
                seq.finish = EOS
            else:
                seq.ids.append(token)
            out.extend((seq, e) for e in self._text_events(seq, now))
        if out:
            self._deliver(out)

    def _text_events(self, seq: Sequence, now: float) -> list[Event]:
        stops = seq.sampling.stop
        if not seq.finish and len(seq.ids) >= seq.sampling.max_new_tokens:
            seq.finish = LENGTH
        if not (seq.deltas or stops or seq.finish):
            return []  # nothing to say yet: skip decoding
        text = self.tokenizer.decode(seq.ids, skip_special_tokens=True)
        if stops:
            search_from = max(0, seq.emitted - max(len(s) for s in stops))
            cuts = [c for c in (text.find(s, search_from) for s in stops) if c >= 0]
            if cuts:
                text, seq.finish = text[: min(cuts)], STOP
        safe = len(text) if seq.finish else _safe_prefix(text, stops)
        events: list[Event] = []
        if seq.deltas and safe > seq.emitted:
            events.append(Delta(text[seq.emitted : safe], len(seq.ids)))
            seq.emitted = safe
        if seq.finish:
            seq.text = text
            events.append(
                Generated(
                    text=text,
                    finish_reason=seq.finish,
                    prompt_tokens=len(seq.prompt_ids),
                    completion_tokens=len(seq.ids),
                    model=self.info,
                    queue_s=seq.started - seq.admitted,
                    ttft_s=seq.first_token - seq.admitted,
                    duration_s=now - seq.admitted,
                )
            )
        return events

    def _evict_finished(self) -> None:
        batch = self._batch
        assert batch is not None
        keep = [i for i, s in enumerate(batch.rows) if not s.finish and not s.cancelled]
        if len(keep) == len(batch.rows):
            return
        if not keep:
            self._batch = None
            return
        self._batch = _select(batch, keep)

    def _deliver(self, events: list[tuple[Sequence, Event | BaseException]]) -> None:
        def put_all() -> None:
            for seq, event in events:
                seq.events.put_nowait(event)

        self.loop.call_soon_threadsafe(put_all)


def _safe_prefix(text: str, stops: tuple[str, ...]) -> int:
    """How much of text may be streamed: not a trailing partial character, and not a tail
    that could still grow into a stop sequence (which must never reach the caller)."""
    end = len(text.rstrip(REPLACEMENT))
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, end), hold, -1):
            if text[end - n : end] == stop[:n]:
                hold = n
                break
    return end - hold


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's per-layer key/value stores, which merging and eviction rewrite."""
    layers = list(cache.layers)
    for layer in layers:
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise TypeError(
                f"continuous batching needs full key/value caches, got {type(layer).__name__}"
            )
    return layers  # type: ignore[return-value]


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    assert layer.keys is not None and layer.values is not None
    return layer.keys, layer.values


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Pads t with zeros on the left of dimension dim up to width."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [missing, 0]
    return F.pad(t, pad)


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """Concatenates two batches on the batch axis, left-padding the shorter one's cache."""
    width = max(a.mask.shape[1], b.mask.shape[1])
    mask = torch.cat([_left_pad(a.mask, width, 1), _left_pad(b.mask, width, 1)])
    for la, lb in zip(_layers(a.cache), _layers(b.cache), strict=True):
        (ka, va), (kb, vb) = _kv(la), _kv(lb)
        la.keys = torch.cat([_left_pad(ka, width, 2), _left_pad(kb, width, 2)])
        la.values = torch.cat([_left_pad(va, width, 2), _left_pad(vb, width, 2)])
    return _Batch(
        rows=a.rows + b.rows,
        cache=a.cache,
        mask=mask,
        padded=not bool(mask.all()),
        positions=torch.cat([a.positions, b.positions]),
        last=torch.cat([a.last, b.last]),
        temperature=torch.cat([a.temperature, b.temperature]),
        top_k=torch.cat([a.top_k, b.top_k]),
        top_p=torch.cat([a.top_p, b.top_p]),
    )


def _select(batch: _Batch, keep: list[int]) -> _Batch:
    """The rows keep, with cache columns that are padding in every remaining row removed."""
    index = torch.tensor(keep, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    start = int(mask.any(dim=0).nonzero()[0, 0])
    for layer in _layers(batch.cache):
        keys, values = _kv(layer)
        layer.keys = keys.index_select(0, index)[:, :, start:]
        layer.values = values.index_select(0, index)[:, :, start:]
    return _Batch(
        rows=[batch.rows[i] for i in keep],
        cache=batch.cache,
        mask=mask[:, start:],
        padded=not bool(mask[:, start:].all()),
        positions=batch.positions.index_select(0, index),
        last=batch.last.index_select(0, index),
        temperature=batch.temperature.index_select(0, index),
        top_k=batch.top_k.index_select(0, index),
        top_p=batch.top_p.index_select(0, index),
    )
