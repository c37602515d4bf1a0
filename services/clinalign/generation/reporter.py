"""Hands every production output to the monitor without ever failing a Generate call, and
without losing one the call returned.

Each output is written to the spool (``clinalign.generation.spool``: bounded, durable)
before its call returns; a background task sends the oldest outputs in batches and removes
them once the monitor acknowledged them, retrying with exponential backoff for as long as
the monitor is down. Outputs spooled when the service stops are sent after it starts again.
Only an output that finds the spool full is dropped, and counted
(``clinalign_generation_monitor_dropped_total{reason="spool_full"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import Counter, Gauge

from clinalign.generation.spool import Item, OutputSpool
from clinalign.monitor.v1 import monitor_pb2

log = logging.getLogger("clinalign.generation.reporter")
tracer = trace.get_tracer("clinalign.generation.reporter")

DROPPED = Counter(
    "clinalign_generation_monitor_dropped",
    "Outputs never delivered to the monitor (the spool was full when they were written).",
    ["reason"],
)
SENT = Counter("clinalign_generation_monitor_sent", "Outputs delivered to the monitor.")
SPOOLED = Gauge(
    "clinalign_generation_monitor_spooled",
    "Outputs written to the spool and not yet acknowledged by the monitor.",
)

Send = Callable[[list[monitor_pb2.ProductionOutput]], Awaitable[None]]


def _traceparent(ctx: SpanContext) -> str:
    if not ctx.is_valid:
        return ""
    return f"{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _span_context(value: str) -> SpanContext | None:
    if not value:
        return None
    trace_id, span_id, flags = value.split("-")
    return SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16))
    )


class MonitorReporter:
    def __init__(
        self,
        send: Send,
        spool: OutputSpool,
        *,
        batch: int,
        backoff_s: float = 0.2,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._send = send
        self._spool = spool
        self._batch = batch
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._note_size()

    async def submit(self, output: monitor_pb2.ProductionOutput) -> bool:
        """Spools an output (durably, before returning); False when the spool was full and
        the output was dropped."""
        context = _traceparent(trace.get_current_span().get_span_context())
        written = await asyncio.to_thread(self._spool.put, output.SerializeToString(), context)
        if not written:
            DROPPED.labels("spool_full").inc()
            log.warning("monitor spool full; output dropped", extra={"fields": {}})
            return False
        self._note_size()
        self._wake.set()
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="monitor-reporter")

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Tries to deliver what is spooled, then stops; what remains stays spooled for the
        next start."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained(), flush_timeout_s)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if len(self._spool):
            log.info(
                "outputs left spooled for the next start",
                extra={"fields": {"outputs": len(self._spool)}},
            )
        self._spool.close()

    @property
    def pending(self) -> int:
        return len(self._spool)

    async def drained(self) -> None:
        """Returns once every output spooled so far was delivered."""
        await self._empty.wait()

    def _note_size(self) -> None:
        SPOOLED.set(len(self._spool))
        if len(self._spool):
            self._empty.clear()
        else:
            self._empty.set()

    async def _run(self) -> None:
        while True:
            items = await asyncio.to_thread(self._spool.peek, self._batch)
            if not items:
                self._wake.clear()
                if not len(self._spool):
                    await self._wake.wait()
                continue
            await self._deliver(items)
            await asyncio.to_thread(self._spool.ack, [i for i, _, _ in items])
            SENT.inc(len(items))
            self._note_size()

    async def _deliver(self, items: list[Item]) -> None:
        """Sends one batch as a child of the first output's request trace, linked to the
        others', so a trace followed from a Generate call reaches the monitor; retries until
        the monitor takes it."""
        contexts = [_span_context(t) for _, _, t in items]
        first = contexts[0]
        parent = trace.set_span_in_context(NonRecordingSpan(first)) if first else None
        links = [Link(c) for c in contexts[1:] if c is not None]
        batch = [monitor_pb2.ProductionOutput.FromString(p) for _, p, _ in items]
        with tracer.start_as_current_span("monitor.deliver", context=parent, links=links):
            delay = self._backoff_s
            attempt = 0
            while True:
                attempt += 1
                try:
                    await self._send(batch)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any failure of the peer: keep it spooled, retry
                    log.warning(
                        "monitor delivery failed; retrying",
                        extra={
                            "fields": {
                                "attempt": attempt,
                                "batch": len(batch),
                                "error": type(exc).__name__,
                                "retry_s": delay,
                            }
                        },
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_backoff_s)
