"""Batching across callers, and the hot-swappable served model.

One worker thread owns a :class:`Scorer`'s model. Requests (a Score call, or one
ScoreStream message) are tokenised on the asyncio side and queued; each time the worker
is free it takes the queued requests, whole, up to ``max_batch_pairs`` pairs (a request
larger than that is taken alone), sorts their pairs by length and scores them in forward
passes of at most ``max_batch_pairs`` rows and ``max_batch_tokens`` padded tokens. Sorting
first keeps the padding of each pass small, and the token budget keeps a pass's
activations in cache: on CPU a pass of about a thousand tokens costs the least per token.
A request is answered as soon as its last pair is scored (futures resolved on the loop
with ``call_soon_threadsafe``); a cancelled caller's pairs are dropped if not yet scored.

Sending each request on its own, as the server received it, would cost one forward pass
per call; batching across callers is what the service is for (the figures are in
``bench/README.md``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from clinalign.common.artefacts import COST
from clinalign.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from clinalign.reward import metrics
from clinalign.reward.scorer import Encoded, Scored, Scorer

log = logging.getLogger("clinalign.reward.batcher")


@dataclass(eq=False)
class _Request:
    """One caller's pairs, shared between the asyncio side and the worker thread."""

    rows: list[Encoded]
    future: asyncio.Future[list[Scored]]
    arrived: float
    raw: list[float] = field(default_factory=list)  # filled by the worker, by row
    left: int = 0  # rows not yet scored
    cancelled: bool = False  # set by the asyncio side; read by the worker between passes

    def __post_init__(self) -> None:
        self.raw = [0.0] * len(self.rows)
        self.left = len(self.rows)


@dataclass(frozen=True)
class _Row:
    request: _Request
    index: int  # in request.rows

    @property
    def ids(self) -> list[int]:
        return self.request.rows[self.index].ids


class Batcher:
    def __init__(
        self,
        scorer: Scorer,
        *,
        max_batch_pairs: int,
        max_batch_tokens: int,
        batch_wait_s: float,
        max_queue_pairs: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.scorer = scorer
        self.info = scorer.info
        self.max_batch_pairs = max_batch_pairs
        self.max_batch_tokens = max_batch_tokens
        self.batch_wait_s = batch_wait_s
        self.max_queue_pairs = max_queue_pairs
        self.loop = loop
        # asyncio side: pairs accepted and not yet answered; close() waits for zero.
        self._pairs = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        # shared with the worker, under _cv
        self._pending: deque[_Request] = deque()
        self._pending_pairs = 0
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"reward-batcher-{self.info.version}", daemon=True
        )

    # ---- asyncio side --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def queued_pairs(self) -> int:
        return self._pairs

    async def score(self, pairs: Sequence[tuple[str, str]], truncate: bool) -> list[Scored]:
        """Scores one caller's pairs together with whatever other callers have queued."""
        if self._closing:
            raise FailedPrecondition(f"reward model {self.info.version} is being replaced; retry")
        if self._pairs + len(pairs) > self.max_queue_pairs:
            raise ResourceExhausted(
                f"reward queue is full ({self._pairs} of {self.max_queue_pairs} pairs waiting); "
                "retry with backoff"
            )
        arrived = time.perf_counter()
        self._admit(len(pairs))
        request: _Request | None = None
        try:
            rows = await asyncio.to_thread(self.scorer.encode, pairs, truncate)
            request = _Request(rows, self.loop.create_future(), arrived)
            with self._cv:
                self._pending.append(request)
                self._pending_pairs += len(rows)
                self._cv.notify()
            scored = await request.future
            metrics.REQUEST_DURATION.labels(self.info.version).observe(
                time.perf_counter() - arrived
            )
            return scored
        finally:
            if request is not None:
                request.cancelled = True  # no-op when answered; frees its rows otherwise
            self._admit(-len(pairs))

    def _admit(self, pairs: int) -> None:
        self._pairs += pairs
        if self._pairs:
            self._idle.clear()
        else:
            self._idle.set()
        metrics.QUEUE_PAIRS.labels(self.info.version).set(self._pairs)

    async def close(self) -> None:
        """Stops taking requests, answers those accepted, then stops the worker."""
        self._closing = True
        await self._idle.wait()
        with self._cv:
            self._stopping = True
            self._cv.notify()
        await asyncio.to_thread(self._thread.join)

    # ---- worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if not self._pending:
                    return
                self._wait_for_more()
                taken = self._take()
            if taken:
                self._score(taken)

    def _wait_for_more(self) -> None:
        """With batch_wait_s, lets a pass that is not full wait for more callers, until
        the oldest queued request has waited that long (under the lock)."""
        if not self.batch_wait_s:
            return
        deadline = self._pending[0].arrived + self.batch_wait_s
        while self._pending_pairs < self.max_batch_pairs and not self._stopping:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._cv.wait(left)

    def _take(self) -> list[_Request]:
        """Queued requests, whole and in arrival order, up to max_batch_pairs pairs (at
        least one request); cancelled ones are dropped (under the lock)."""
        taken: list[_Request] = []
        pairs = 0
        while self._pending:
            request = self._pending[0]
            if request.cancelled:
                self._pending.popleft()
                self._pending_pairs -= len(request.rows)
                continue
            if taken and pairs + len(request.rows) > self.max_batch_pairs:
                break
            self._pending.popleft()
            self._pending_pairs -= len(request.rows)
            taken.append(request)
            pairs += len(request.rows)
        return taken

    def _score(self, requests: list[_Request]) -> None:
        started = time.perf_counter()
        for request in requests:
            metrics.QUEUE_TIME.observe(started - request.arrived)
        rows = sorted(
            (_Row(r, i) for r in requests for i in range(len(r.rows))), key=lambda x: len(x.ids)
        )
        try:
            lengths = [len(row.ids) for row in rows]
            for part in passes(lengths, self.max_batch_pairs, self.max_batch_tokens):
                live = [row for row in rows[part] if not row.request.cancelled]
                if live:
                    self._forward(live)
        except Exception as exc:  # a fault in the model fails its requests, not the worker
            log.exception("reward forward pass failed")
            failed = [r for r in requests if r.left]
            self.loop.call_soon_threadsafe(_fail, failed, exc)

    def _forward(self, rows: list[_Row]) -> None:
        raw = self.scorer.forward([row.ids for row in rows])
        metrics.BATCH_SIZE.observe(len(rows))
        metrics.BATCH_REQUESTS.observe(len({id(row.request) for row in rows}))
        served = [self.scorer.normalise(x) for x in raw]
        if self.scorer.kind == COST:
            metrics.observe_costs(self.info.version, served)
        else:
            metrics.observe_scores(self.info.version, served)
        done: list[tuple[_Request, list[Scored]]] = []
        for row, x in zip(rows, raw, strict=True):
            request = row.request
            request.raw[row.index] = x
            request.left -= 1
            if request.left == 0:
                done.append((request, self._results(request)))
        if done:
            self.loop.call_soon_threadsafe(_resolve, done)

    def _results(self, request: _Request) -> list[Scored]:
        return [
            Scored(self.scorer.normalise(x), x, row.truncated)
            for x, row in zip(request.raw, request.rows, strict=True)
        ]


def passes(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[slice]:
    """Cuts rows, sorted by length, into consecutive forward passes of at most max_rows
    rows and max_tokens padded tokens (rows times the longest row); one row always makes
    a pass."""
    out: list[slice] = []
    start = 0
    for end, n in enumerate(lengths):
        rows = end - start + 1
        if rows > 1 and (rows > max_rows or rows * n > max_tokens):
            out.append(slice(start, end))
            start = end
    if start < len(lengths):
        out.append(slice(start, len(lengths)))
    return out


def _resolve(done: list[tuple[_Request, list[Scored]]]) -> None:
    for request, results in done:
        if not request.future.done():
            request.future.set_result(results)


def _fail(requests: list[_Request], exc: BaseException) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(exc)


Load = Callable[[str], Awaitable[Batcher]]  # registry version -> started batcher


class ActiveModel:
    """The batcher that scores requests now, swapped atomically by :meth:`activate`.

    A request picks the batcher once and keeps it; a replaced batcher is closed only after
    the requests it accepted are answered, so a swap drops none and in-flight requests
    finish on the old model.
    """

    def __init__(
        self, load: Load, on_activated: Callable[[], Awaitable[None]], what: str = "reward"
    ) -> None:
        self._load = load
        self.what = what  # "reward" or "cost", in messages
        self._on_activated = on_activated
        self._current: Batcher | None = None
        self._switch = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def current(self) -> Batcher | None:
        return self._current

    def serve(self, batcher: Batcher) -> None:
        """Sets the initial model (already started)."""
        self._current = batcher

    def pick(self) -> Batcher:
        if self._current is None:
            raise FailedPrecondition(
                f"no {self.what} model is active: the registry serves none; promote one "
                "(PromoteModel)"
            )
        return self._current

    async def activate(self, version: str) -> Batcher:
        if not version:
            raise InvalidArgument("version", "is required: the registry version to serve")
        async with self._switch:
            old = self._current
            if old is not None and old.info.version == version:
                return old
            fresh = await self._load(version)
            self._current = fresh
            if old is not None:
                self._retire(old)
            log.info(f"{self.what} model activated", extra={"fields": {"version": version}})
        await self._on_activated()
        return fresh

    def _retire(self, batcher: Batcher) -> None:
        task = asyncio.create_task(batcher.close(), name=f"retire-{batcher.info.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        if self._current is not None:
            self._retire(self._current)
            self._current = None
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
