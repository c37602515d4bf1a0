"""Hands every output to the monitor without ever slowing or failing a Generate call.

Outputs go into a bounded in-memory buffer; a background task sends them in batches with
retry and exponential backoff. When the buffer is full the newest output is dropped and
counted (``clinalign_generation_monitor_dropped_total``), never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext
from prometheus_client import Counter

from clinalign.monitor.v1 import monitor_pb2

log = logging.getLogger("clinalign.generation.reporter")
tracer = trace.get_tracer("clinalign.generation.reporter")

DROPPED = Counter(
    "clinalign_generation_monitor_dropped",
    "Outputs not delivered to the monitor (buffer full or retries exhausted).",
    ["reason"],
)
SENT = Counter("clinalign_generation_monitor_sent", "Outputs delivered to the monitor.")

Send = Callable[[list[monitor_pb2.ProductionOutput]], Awaitable[None]]


class MonitorReporter:
    def __init__(
        self,
        send: Send,
        *,
        capacity: int,
        batch: int,
        max_attempts: int = 5,
        backoff_s: float = 0.2,
    ) -> None:
        self._send = send
        # Each output travels with the span context of the request that produced it.
        self._queue: asyncio.Queue[tuple[monitor_pb2.ProductionOutput, SpanContext]] = (
            asyncio.Queue(capacity)
        )
        self._batch = batch
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._task: asyncio.Task[None] | None = None

    def submit(self, output: monitor_pb2.ProductionOutput) -> bool:
        try:
            self._queue.put_nowait((output, trace.get_current_span().get_span_context()))
            return True
        except asyncio.QueueFull:
            DROPPED.labels("buffer_full").inc()
            return False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="monitor-reporter")

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Tries to flush what is buffered, then stops; what remains is counted as dropped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), flush_timeout_s)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue.qsize():
            DROPPED.labels("shutdown").inc(self._queue.qsize())

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def drained(self) -> None:
        """Returns once every output submitted so far was delivered or given up on."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._deliver(batch)
            for _ in batch:
                self._queue.task_done()

    async def _deliver(self, batch: list[tuple[monitor_pb2.ProductionOutput, SpanContext]]) -> None:
        """Sends one batch as a child of the first output's request trace, linked to the
        others', so a trace followed from a Generate call reaches the monitor."""
        parent = trace.set_span_in_context(NonRecordingSpan(batch[0][1]))
        links = [Link(ctx) for _, ctx in batch[1:] if ctx.is_valid]
        with tracer.start_as_current_span("monitor.deliver", context=parent, links=links):
            await self._deliver_with_retry([out for out, _ in batch])

    async def _deliver_with_retry(self, batch: list[monitor_pb2.ProductionOutput]) -> None:
        delay = self._backoff_s
        for attempt in range(1, self._max_attempts + 1):
            try:
                await self._send(batch)
                SENT.inc(len(batch))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the peer: retry, then count the drop
                log.warning(
                    "monitor delivery failed",
                    extra={
                        "fields": {
                            "attempt": attempt,
                            "batch": len(batch),
                            "error": type(exc).__name__,
                        }
                    },
                )
                if attempt < self._max_attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
        DROPPED.labels("retries_exhausted").inc(len(batch))
