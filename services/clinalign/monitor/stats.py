"""Per-version statistics for a window (GetStats, the gauges and the retraining policy):
outputs generated in the window, the flags and outcomes on them, their scores, latency and
costs, and the version's frozen baseline (``store``) for drift; and, per cost model, how
well its costs told apart the outputs clinicians flagged from those they accepted
(``cost_verdicts``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from clinalign.common import discrimination
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


# flag severities that make an output harmful, as for the cost model's own label
# (clinalign.common.cost_format.HARMFUL_SEVERITIES): moderate or worse
_HARMFUL = frozenset({pb.SEVERITY_MODERATE, pb.SEVERITY_HIGH, pb.SEVERITY_CRITICAL})


@dataclass(frozen=True)
class CostModelSummary:
    """What GetStats reports of one cost model (``CostVerdicts.summary``)."""

    cost_model_version: str
    harmful: int
    clean: int
    figures: dict[str, float]  # auroc, auroc_low, auroc_high, calibration_error; or none
    auroc_by_category: dict[int, float]  # ErrorCategory number -> AUROC


@dataclass(frozen=True)
class CostVerdicts:
    """One cost model's costs of the production outputs clinicians judged after it first
    scored: the harmful ones (a confirmed flag of moderate severity or worse; with the
    categories confirmed) and the clean ones (accepted, never overridden, with no flag but
    dismissed ones)."""

    cost_model_version: str
    harmful: list[tuple[float, frozenset[int]]]  # (cost, confirmed categories)
    clean: list[float]

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(1 harmful / 0 clean, cost) per output."""
        y = np.asarray([1] * len(self.harmful) + [0] * len(self.clean))
        return y, np.asarray([c for c, _ in self.harmful] + self.clean, dtype=float)

    def auroc(self) -> float | None:
        """The AUROC of the cost, harmful against clean; None without both."""
        return discrimination.auroc(*self._arrays())

    def figures(self, seed: int = 0) -> dict[str, float]:
        """``auroc`` with its 95 % interval over outputs (``auroc_low``, ``auroc_high``)
        and ``calibration_error``, where both classes are present."""
        y, p = self._arrays()
        auroc = discrimination.auroc(y, p)
        if auroc is None:
            return {}
        each_output = [str(i) for i in range(y.size)]  # outputs are independent
        low, high = discrimination.auroc_interval(y, p, each_output, seed=seed) or (auroc, auroc)
        return {
            "auroc": auroc,
            "auroc_low": low,
            "auroc_high": high,
            "calibration_error": discrimination.expected_calibration_error(y, p),
        }

    def auroc_by_category(self) -> dict[int, float]:
        """Category number -> AUROC of the cost, that category's harmful outputs against
        the clean ones."""
        out: dict[int, float] = {}
        for category in sorted({c for _, cs in self.harmful for c in cs}):
            positives = [cost for cost, cs in self.harmful if category in cs]
            y = np.asarray([1] * len(positives) + [0] * len(self.clean))
            auroc = discrimination.auroc(y, np.asarray(positives + self.clean))
            if auroc is not None:
                out[category] = auroc
        return out

    def summary(self) -> CostModelSummary:
        """The counts and every figure (the interval's bootstrap included)."""
        return CostModelSummary(
            self.cost_model_version,
            len(self.harmful),
            len(self.clean),
            self.figures(),
            self.auroc_by_category(),
        )


def cost_verdicts(
    session: Session,
    model_version: str | None,
    start: datetime,
    end: datetime,
    confirmed_status: int,
    dismissed_status: int,
) -> list[CostVerdicts]:
    """Per cost model that scored outputs generated in [start, end) (of ``model_version``,
    when given): its costs of the outputs judged harmful or clean. Only outputs with a flag
    or an acceptance are read. An output counts only if every verdict on it (flag,
    outcome) was recorded after that cost model first scored any output: a cost model
    trains on the flags fed back before it was built, so these are flags it cannot have
    seen. Open flags, and overrides without a confirmed flag, decide nothing: such outputs
    are left out."""
    judged = _judged(start, end, model_version)
    outputs: dict[str, tuple[str, float]] = {
        oid: (version, cost)
        for oid, version, cost in session.execute(
            select(OutputRow.output_id, OutputRow.cost_model_version, OutputRow.cost).where(*judged)
        )
        if cost is not None  # judged holds only charged outputs
    }
    if not outputs:
        return []
    # each cost model's first scoring (ix_outputs_cost_model_version_scored_at)
    first_scored = dict(
        session.execute(
            select(OutputRow.cost_model_version, func.min(OutputRow.scored_at))
            .where(OutputRow.cost_model_version.in_({v for v, _ in outputs.values()}))
            .group_by(OutputRow.cost_model_version)
        ).all()
    )
    flags: dict[str, list[tuple[int, int, int, datetime]]] = {}
    for oid, category, severity, status, at in session.execute(
        select(
            FlagRow.output_id,
            FlagRow.category,
            FlagRow.severity,
            FlagRow.status,
            FlagRow.created_at,
        )
        .join(OutputRow, OutputRow.output_id == FlagRow.output_id)
        .where(*judged)
    ):
        flags.setdefault(oid, []).append((category, severity, status, at))
    acts: dict[str, list[tuple[int, datetime]]] = {}
    for oid, outcome, at in session.execute(
        select(OutcomeRow.output_id, OutcomeRow.outcome, OutcomeRow.recorded_at)
        .join(OutputRow, OutputRow.output_id == OutcomeRow.output_id)
        .where(*judged)
    ):
        acts.setdefault(oid, []).append((outcome, at))

    by_model: dict[str, CostVerdicts] = {}
    for oid, (version, cost) in sorted(outputs.items()):
        since = first_scored.get(version)
        mine, acted = flags.get(oid, []), acts.get(oid, [])
        times = [at for *_, at in mine] + [at for _, at in acted]
        if since is None or any(at <= since for at in times):
            continue
        found = by_model.setdefault(version, CostVerdicts(version, [], []))
        harmful = frozenset(
            c
            for c, severity, status, _ in mine
            if status == confirmed_status and severity in _HARMFUL
        )
        if harmful:
            found.harmful.append((cost, harmful))
        elif (
            acted
            and all(o == pb.OUTCOME_ACCEPTED for o, _ in acted)
            and all(status == dismissed_status for _, _, status, _ in mine)
        ):
            found.clean.append(cost)
    return [by_model[v] for v in sorted(by_model)]


def _judged(start: datetime, end: datetime, model_version: str | None) -> list[Any]:
    """The conditions on an output that ``cost_verdicts`` reads: generated in [start, end)
    (by ``model_version``, when given), charged a cost, and flagged or accepted."""
    flag, act = aliased(FlagRow), aliased(OutcomeRow)  # apart from the callers' joins
    has_flag = select(flag.id).where(flag.output_id == OutputRow.output_id).exists()
    accepted_once = (
        select(act.id)
        .where(act.output_id == OutputRow.output_id, act.outcome == pb.OUTCOME_ACCEPTED)
        .exists()
    )
    judged = [
        OutputRow.created_at >= start,
        OutputRow.created_at < end,
        OutputRow.cost.is_not(None),
        OutputRow.cost_model_version != "",
        has_flag | accepted_once,
    ]
    if model_version:
        judged.append(OutputRow.model_version == model_version)
    return judged
