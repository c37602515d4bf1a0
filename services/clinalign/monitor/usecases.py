"""The monitor's use cases, one method per RPC, transport-free: each validates its input
(``InvalidArgument`` naming the field), owns its transaction and invariants, and updates
the service's metrics. The servicer only converts between protobuf and these types; the
CLI, the demo and the console reach the same code through the RPCs.

The closed loop's longer-running parts live beside it: ``feedback`` (confirmed flags to
the preference store), ``retraining`` (the policy and its runs) and ``lineage``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from clinalign.common.channels import Clients
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.pagination import next_token, page_bounds
from clinalign.common.redaction import redact_fields, unchanged
from clinalign.common.v1 import common_pb2
from clinalign.monitor import (
    feedback,
    flags,
    lineage,
    metrics,
    outcomes,
    outputs,
    retraining,
    store,
)
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.convert import category_name, severity_name
from clinalign.monitor.stats import (
    CostModelSummary,
    WindowStats,
    cost_verdicts,
    window_stats,
)
from clinalign.monitor.v1 import monitor_pb2 as pb

ID_CHARS = 64  # output ids, model and template versions
# A drafting task as ProductionOutput.task spells it ("summary", "free_text"); "" is unsaid.
TASK = re.compile(r"[a-z0-9_-]{0,64}")
TASK_RULE = "must be at most 64 characters of a-z, 0-9, '_' and '-', such as 'summary'"


@dataclass(frozen=True)
class Limits:
    """The request limits (``MonitorSettings``, where each is documented and has its
    default)."""

    max_batch: int
    max_text_chars: int
    max_comment_chars: int
    baseline_outputs: int
    psi_bins: int

    @classmethod
    def from_settings(cls, settings: MonitorSettings) -> Limits:
        return cls(
            max_batch=settings.max_batch,
            max_text_chars=settings.max_text_chars,
            max_comment_chars=settings.max_comment_chars,
            baseline_outputs=settings.baseline_outputs,
            psi_bins=settings.psi_bins,
        )


@dataclass(frozen=True)
class FlagPage:
    flags: list[store.FlagRow]
    feedback: dict[str, feedback.View]
    next_page_token: str


@dataclass(frozen=True)
class OutputPage:
    outputs: list[outputs.Summary]
    next_page_token: str


@dataclass(frozen=True)
class OutputDetail:
    summary: outputs.Summary
    flags: list[store.FlagRow]  # oldest first
    feedback: dict[str, feedback.View]  # of its confirmed flags


@dataclass(frozen=True)
class ReplayPage:
    cases: list[flags.ReplayCase]
    next_page_token: str
    purged: int


# ListReplayCases pages: the gate wants every case, so its pages are larger than ListFlags'.
REPLAY_PAGE_DEFAULT, REPLAY_PAGE_MAX = 100, 500


def check_output(i: int, out: store.OutputRecord, limits: Limits) -> None:
    field = f"outputs[{i}]"
    if not out.output_id or len(out.output_id) > ID_CHARS:
        raise InvalidArgument(f"{field}.output_id", "is required, at most 64 characters")
    if not out.model_version or len(out.model_version) > ID_CHARS:
        raise InvalidArgument(f"{field}.model_version", "is required, at most 64 characters")
    if len(out.prompt_template_version) > ID_CHARS:
        raise InvalidArgument(f"{field}.prompt_template_version", "is at most 64 characters")
    if not TASK.fullmatch(out.task):
        raise InvalidArgument(f"{field}.task", TASK_RULE)
    for name in ("prompt", "text"):
        if len(getattr(out, name)) > limits.max_text_chars:
            raise InvalidArgument(
                f"{field}.{name}", f"is longer than {limits.max_text_chars} characters"
            )
    if out.latency_s < 0:
        raise InvalidArgument(f"{field}.latency_s", "must not be negative")
    if out.completion_tokens < 0:
        raise InvalidArgument(f"{field}.completion_tokens", "must not be negative")


def check_flag(new: flags.NewFlag, limits: Limits) -> None:
    if not new.output_id:
        raise InvalidArgument("output_id", "is required")
    if new.category == common_pb2.ERROR_CATEGORY_UNSPECIFIED:
        raise InvalidArgument("category", "is required: one of the ErrorCategory values")
    if new.category not in common_pb2.ErrorCategory.values():
        raise InvalidArgument("category", f"{new.category} is not an ErrorCategory value")
    if new.severity == pb.SEVERITY_UNSPECIFIED:
        raise InvalidArgument("severity", "is required: SEVERITY_LOW to SEVERITY_CRITICAL")
    if new.severity not in pb.Severity.values():
        raise InvalidArgument("severity", f"{new.severity} is not a Severity value")
    if len(new.comment) > limits.max_comment_chars:
        raise InvalidArgument("comment", f"is longer than {limits.max_comment_chars} characters")
    if len(new.corrected_text) > limits.max_text_chars:
        raise InvalidArgument(
            "corrected_text", f"is longer than {limits.max_text_chars} characters"
        )


def check_filter(f: flags.Filter) -> None:
    if f.status not in pb.FlagStatus.values():
        raise InvalidArgument("status", f"{f.status} is not a FlagStatus value")
    if f.category not in common_pb2.ErrorCategory.values():
        raise InvalidArgument("category", f"{f.category} is not an ErrorCategory value")
    if f.min_severity not in pb.Severity.values():
        raise InvalidArgument("min_severity", f"{f.min_severity} is not a Severity value")


def check_output_filter(f: outputs.Filter) -> None:
    if len(f.model_version) > ID_CHARS:
        raise InvalidArgument("model_version", "is at most 64 characters")
    if not TASK.fullmatch(f.task):
        raise InvalidArgument("task", TASK_RULE)
    if f.start is not None and f.end is not None and f.start >= f.end:
        raise InvalidArgument("start_time", "must be before end_time")
    if f.flag_state not in pb.FlagState.values():
        raise InvalidArgument("flag_state", f"{f.flag_state} is not a FlagState value")


def check_output_id(output_id: str) -> None:
    if not output_id:
        raise InvalidArgument("output_id", "is required: the output id from a provenance")
    if len(output_id) > ID_CHARS:
        raise InvalidArgument("output_id", "is at most 64 characters")


# What a ResolveFlag resolution sets a flag to; anything else is refused.
RESOLUTIONS: dict[int, int] = {
    pb.RESOLUTION_CONFIRM: flags.CONFIRMED,
    pb.RESOLUTION_DISMISS: flags.DISMISSED,
}


class Monitor:
    """The use cases over the monitor's database, its de-identifier and its peers."""

    def __init__(
        self,
        db: Database,
        redact: store.Redactor,
        limits: Limits,
        loop: retraining.Retraining | None = None,
        peers: Clients | None = None,
    ) -> None:
        self.db = db
        self.redact = redact
        self.limits = limits
        self.loop = loop
        self.peers = peers

    async def record_outputs(self, records: Sequence[store.OutputRecord]) -> tuple[int, int]:
        """(outputs recorded, duplicates skipped) of one batch, written whole or not at all."""
        if not records:
            raise InvalidArgument("outputs", "must hold at least one output")
        if len(records) > self.limits.max_batch:
            raise InvalidArgument(
                "outputs", f"holds {len(records)}; at most {self.limits.max_batch} per call"
            )
        for i, record in enumerate(records):
            check_output(i, record, self.limits)
        n = self.limits.baseline_outputs
        clean = await redact_fields(self.redact, records, ("prompt", "text"))
        # A race to freeze one baseline (PostgreSQL) rolls the batch back; run_write's
        # retry then records it whole.
        recorded, dupes = await self.db.run_write(
            lambda s: store.record_outputs(s, clean, unchanged, n)
        )
        for version, count in recorded.items():
            metrics.OUTPUTS.labels(version).inc(count)
        return sum(recorded.values()), dupes

    async def flag_output(self, new: flags.NewFlag, who: str) -> store.FlagRow:
        check_flag(new, self.limits)
        (clean,) = await redact_fields(self.redact, [new], ("comment", "corrected_text"))
        row = await self.db.run_write(lambda s: flags.create(s, clean, unchanged, who))
        metrics.FLAGS.labels(category_name(row.category), severity_name(row.severity)).inc()
        return row

    async def record_outcome(self, new: outcomes.NewOutcome, who: str) -> bool:
        """Stores what a clinician did with an output, once per (output, outcome, time);
        True when it was a replay and nothing was written."""
        when = outcomes.check(new, datetime.now(UTC))
        version, replayed = await self.db.run_write(lambda s: outcomes.record(s, new, when, who))
        if not replayed:
            metrics.OUTCOMES.labels(version, outcomes.NAMES[new.outcome]).inc()
        return replayed

    async def list_flags(self, f: flags.Filter, page_size: int, page_token: str) -> FlagPage:
        check_filter(f)
        limit, offset = page_bounds(page_size, page_token)

        def page(s: Session) -> tuple[list[store.FlagRow], dict[str, feedback.View]]:
            rows = flags.list_flags(s, f, limit, offset)
            return rows, feedback.views(s, [r.id for r in rows])

        rows, delivery = await self.db.run_sync(page)
        return FlagPage(rows, delivery, next_token(offset, limit, len(rows)))

    async def list_outputs(self, f: outputs.Filter, page_size: int, page_token: str) -> OutputPage:
        """Recent outputs for review, newest first, with their flag counts."""
        check_output_filter(f)
        limit, offset = page_bounds(page_size, page_token)
        rows = await self.db.run_sync(lambda s: outputs.list_outputs(s, f, limit, offset))
        return OutputPage(rows, next_token(offset, limit, len(rows)))

    async def get_output(self, output_id: str) -> OutputDetail:
        """One output with its flag counts, every flag on it and its confirmed flags'
        feedback; NOT_FOUND for an unknown id."""
        check_output_id(output_id)

        def detail(s: Session) -> OutputDetail:
            summary, rows = outputs.get_output(s, output_id)
            return OutputDetail(summary, rows, feedback.views(s, [r.id for r in rows]))

        return await self.db.run_sync(detail)

    async def replay_cases(self, min_severity: int, page_size: int, page_token: str) -> ReplayPage:
        """The confirmed flags at or above ``min_severity`` (unspecified: critical) that the
        promotion gate replays, with their de-identified text as stored. ``purged`` counts
        those retention has erased the prompt of, over the whole listing, the same on every
        page (as AIP-158's ``total_size``), so a caller reads it once, not summed."""
        if min_severity not in pb.Severity.values():
            raise InvalidArgument("min_severity", f"{min_severity} is not a Severity value")
        limit, offset = page_bounds(
            page_size, page_token, default=REPLAY_PAGE_DEFAULT, maximum=REPLAY_PAGE_MAX
        )
        floor = min_severity or pb.SEVERITY_CRITICAL

        def page(s: Session) -> tuple[list[flags.ReplayCase], int]:
            return flags.replay_cases(s, floor, limit, offset), flags.count_purged(s, floor)

        cases, purged = await self.db.run_sync(page)
        return ReplayPage(cases, next_token(offset, limit, len(cases)), purged)

    async def resolve_flag(
        self, flag_id: str, resolution: int, reason: str, who: str
    ) -> tuple[store.FlagRow, feedback.View | None]:
        """Confirms or dismisses a flag; a confirmed flag's feedback is enqueued in the same
        transaction, so no confirmed flag is lost between the two."""
        if not flag_id:
            raise InvalidArgument("flag_id", "is required")
        status = RESOLUTIONS.get(resolution)
        if status is None:
            raise InvalidArgument("resolution", "must be RESOLUTION_CONFIRM or RESOLUTION_DISMISS")
        reason = reason.strip()
        if status == flags.DISMISSED and not reason:
            raise InvalidArgument("reason", "is required when dismissing a flag")
        if len(reason) > self.limits.max_comment_chars:
            raise InvalidArgument(
                "reason", f"is longer than {self.limits.max_comment_chars} characters"
            )

        clean_reason = await asyncio.to_thread(self.redact, reason) if reason else ""

        def resolve(s: Session) -> tuple[store.FlagRow, feedback.View | None]:
            row = flags.resolve(s, flag_id, status, clean_reason, unchanged, who)
            if row.status != flags.CONFIRMED:
                return row, None
            feedback.enqueue(s, row)
            return row, feedback.views(s, [row.id]).get(row.id)

        row, delivery = await self.db.run_write(resolve)
        outcome = "confirm" if status == flags.CONFIRMED else "dismiss"
        metrics.RESOLUTIONS.labels(category_name(row.category), outcome).inc()
        return row, delivery

    async def stats(
        self, model_version: str, start: datetime, end: datetime
    ) -> tuple[list[WindowStats], list[CostModelSummary]]:
        """Per policy version, and per cost model: how its costs told apart the outputs
        clinicians flagged from those they accepted (``stats.cost_verdicts``), bootstrap
        included, off the event loop."""
        if start >= end:
            raise InvalidArgument("start_time", "must be before end_time")

        def read(s: Session) -> tuple[list[WindowStats], list[CostModelSummary]]:
            version = model_version or None
            judged = cost_verdicts(s, version, start, end, flags.CONFIRMED, flags.DISMISSED)
            return (
                window_stats(s, version, start, end, flags.CONFIRMED),
                [c.summary() for c in judged],
            )

        return await self.db.run_sync(read)

    async def lineage(
        self, output_id: str
    ) -> tuple[list[lineage.Step], common_pb2.ModelVersion | None]:
        check_output_id(output_id)
        if self.peers is None:
            raise FailedPrecondition("this monitor has no peers to follow the lineage through")
        return await lineage.walk(self.db, self.peers.trainer, self.peers.preference, output_id)

    async def evaluate_retraining(self, dry_run: bool) -> retraining.Evaluation:
        if self.loop is None:
            raise FailedPrecondition("this monitor runs no retraining policy")
        return await self.loop.evaluate(dry_run)

    async def list_runs(
        self, page_size: int, page_token: str
    ) -> tuple[list[retraining.RunView], str]:
        limit, offset = page_bounds(page_size, page_token)
        runs = await self.db.run_sync(lambda s: retraining.list_runs(s, limit, offset))
        return runs, next_token(offset, limit, len(runs))
