"""Per-version statistics for a window (GetStats, the gauges and the retraining policy):
outputs generated in the window, the flags and outcomes on them, their scores, latency and
costs, and the version's frozen baseline (``store``) for drift."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clinalign.monitor import drift
from clinalign.monitor.store import BaselineRow, FlagRow, OutcomeRow, OutputRow
from clinalign.monitor.v1 import monitor_pb2 as pb


@dataclass(frozen=True)
class WindowStats:
    """One version's figures for a window, and its baseline's where one is frozen."""

    model_version: str
    outputs: int
    flags: int
    confirmed_by_category: dict[int, int]
    reward_scores: list[float]
    latency: list[float]
    baseline_outputs: int
    baseline_flags: int
    baseline_scores: list[float]
    costs: list[float] = field(default_factory=list)
    baseline_costs: list[float] = field(default_factory=list)
    accepted: int = 0
    overridden: int = 0

    @property
    def cost_mean(self) -> float | None:
        return sum(self.costs) / len(self.costs) if self.costs else None

    @property
    def baseline_cost_mean(self) -> float | None:
        return sum(self.baseline_costs) / len(self.baseline_costs) if self.baseline_costs else None

    @property
    def flag_rate(self) -> float:
        return self.flags / self.outputs if self.outputs else 0.0

    @property
    def baseline_flag_rate(self) -> float | None:
        return self.baseline_flags / self.baseline_outputs if self.baseline_outputs else None

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / (accepted + overridden); None with neither."""
        decided = self.accepted + self.overridden
        return self.accepted / decided if decided else None

    def drift(self, bins: int) -> tuple[float | None, float | None]:
        """(PSI, KS) of the window's reward scores against the baseline's, when both have
        scores."""
        if not self.reward_scores or not self.baseline_scores:
            return None, None
        return (
            drift.psi(self.baseline_scores, self.reward_scores, bins),
            drift.ks_statistic(self.baseline_scores, self.reward_scores),
        )


def window_stats(
    session: Session,
    model_version: str | None,
    start: datetime,
    end: datetime,
    confirmed_status: int,
) -> list[WindowStats]:
    """Per version with outputs in [start, end): outputs, flags and outcomes on those
    outputs, confirmed flags by category, scores and latency; plus the version's baseline.
    Flags and outcomes count by their output's generation time, not their own, so a rate's
    numerator and denominator are the same outputs."""
    in_window = (OutputRow.created_at >= start, OutputRow.created_at < end)
    query = select(
        OutputRow.model_version, OutputRow.latency_s, OutputRow.reward_score, OutputRow.cost
    ).where(*in_window)
    if model_version:
        query = query.where(OutputRow.model_version == model_version)
    by_version: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for version, latency, score, cost in session.execute(query):
        lat, scores, costs = by_version.setdefault(version, ([], [], []))
        lat.append(latency)
        if score is not None:
            scores.append(score)
        if cost is not None:
            costs.append(cost)

    flags = (
        select(FlagRow.model_version, FlagRow.category, FlagRow.status, func.count())
        .join(OutputRow, OutputRow.output_id == FlagRow.output_id)
        .where(*in_window)
        .group_by(FlagRow.model_version, FlagRow.category, FlagRow.status)
    )
    if model_version:
        flags = flags.where(FlagRow.model_version == model_version)
    flag_counts: dict[str, int] = {}
    confirmed: dict[str, dict[int, int]] = {}
    for version, category, status, n in session.execute(flags):
        flag_counts[version] = flag_counts.get(version, 0) + n
        if status == confirmed_status:
            confirmed.setdefault(version, {})[category] = n
    outcomes = _outcomes(session, model_version, start, end)

    out = []
    for version, (lat, scores, costs) in sorted(by_version.items()):
        b_count, b_flags, b_scores, b_costs = _baseline(session, version)
        counts = outcomes.get(version, {})
        out.append(
            WindowStats(
                model_version=version,
                outputs=len(lat),
                flags=flag_counts.get(version, 0),
                confirmed_by_category=confirmed.get(version, {}),
                reward_scores=scores,
                latency=lat,
                baseline_outputs=b_count,
                baseline_flags=b_flags,
                baseline_scores=b_scores,
                costs=costs,
                baseline_costs=b_costs,
                accepted=counts.get(pb.OUTCOME_ACCEPTED, 0),
                overridden=counts.get(pb.OUTCOME_OVERRIDDEN, 0),
            )
        )
    return out


def _outcomes(
    session: Session, model_version: str | None, start: datetime, end: datetime
) -> dict[str, dict[int, int]]:
    """Version -> Outcome number -> outcomes recorded on its outputs in [start, end)."""
    query = (
        select(OutcomeRow.model_version, OutcomeRow.outcome, func.count())
        .join(OutputRow, OutputRow.output_id == OutcomeRow.output_id)
        .where(OutputRow.created_at >= start, OutputRow.created_at < end)
        .group_by(OutcomeRow.model_version, OutcomeRow.outcome)
    )
    if model_version:
        query = query.where(OutcomeRow.model_version == model_version)
    found: dict[str, dict[int, int]] = {}
    for version, outcome, n in session.execute(query):
        found.setdefault(version, {})[outcome] = n
    return found


def _baseline(session: Session, version: str) -> tuple[int, int, list[float], list[float]]:
    """(outputs, flags, reward scores, costs) of a version's frozen baseline; zeros if
    none."""
    count = session.scalar(select(BaselineRow.outputs).where(BaselineRow.model_version == version))
    if not count:
        return 0, 0, [], []
    members = (OutputRow.model_version == version, OutputRow.in_baseline.is_(True))
    scored = session.execute(select(OutputRow.reward_score, OutputRow.cost).where(*members)).all()
    scores = [s for s, _ in scored if s is not None]
    costs = [c for _, c in scored if c is not None]
    flags = session.scalar(
        select(func.count())
        .select_from(FlagRow)
        .join(OutputRow, OutputRow.output_id == FlagRow.output_id)
        .where(*members)
    )
    return count, int(flags or 0), scores, costs
