"""The promotion gate: what decides whether a registered version may be served.

A reward version is evaluated, beside the served reward model it would replace, on the
``eval`` split of a preference snapshot, and must pass the reward-model rule of
``clinalign.reward.evaluation.promotion_check``: pairwise accuracy above chance with
confidence, and not below the served model's on the same pairs. The snapshot is the one
the version was trained on (its job's ``snapshot_id``, else the content hash its manifest
records); a version without one, such as a registered directory, is judged on the served
model's snapshot. The policy gate (held-out reward, win rate, KL to the parent) arrives
with the PPO trainer.

Transport-free: the snapshot comes through a passed-in async fetcher, and the decision is
applied and recorded through the registry (``Registry.decide``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.trainer import jobs
from clinalign.trainer.errors import NotAvailableYet
from clinalign.trainer.registry import POLICY, ModelVersion, Registry

if TYPE_CHECKING:  # evaluation loads torch, which the trainer loads only when it gates
    from clinalign.reward.evaluation import Report

log = logging.getLogger("clinalign.trainer.gate")

# (records of both splits, the snapshot's content hash) of a snapshot id or content hash
SnapshotFetcher = Callable[[str], Awaitable[tuple[list[dict[str, Any]], str]]]

ACCURACY_CI_LOW = "accuracy_ci_low"
ACCURACY_VS_SERVED = "accuracy_vs_served"


@dataclass(frozen=True)
class Check:
    """One figure the gate checked (the proto's ``GateCheck``)."""

    name: str
    value: float
    threshold: float
    passed: bool
    message: str


@dataclass(frozen=True)
class Decision:
    promoted: bool
    checks: list[Check]
    version: ModelVersion


def records_from_export(data: bytes) -> list[dict[str, Any]]:
    """The records of a JSONL snapshot export (``ExportSnapshot``, kind PREFERENCE)."""
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def reward_checks(report: Report) -> list[Check]:
    """The gate's checks from a ``clinalign.reward.evaluation.Report`` (with its baseline,
    if a reward model is served). The failure messages are ``promotion_check``'s own, so
    the rule and its wording live in one place."""
    from clinalign.reward.evaluation import CHANCE, promotion_check

    # promotion_check without the baseline holds the confidence rule's failure only.
    ci_failures = promotion_check(replace(report, baseline=None))
    level = f"{report.ci_level:.0%}"
    checks = [
        Check(
            ACCURACY_CI_LOW,
            report.ci_low,
            CHANCE,
            not ci_failures,
            ci_failures[0]
            if ci_failures
            else f"pairwise accuracy {report.accuracy:.2f} ({level} CI {report.ci_low:.2f} to "
            f"{report.ci_high:.2f}) is above chance ({CHANCE}) with confidence, n={report.n}",
        )
    ]
    base = report.baseline
    if base is not None:
        base_failures = [f for f in promotion_check(report) if f not in ci_failures]
        checks.append(
            Check(
                ACCURACY_VS_SERVED,
                report.accuracy,
                base.accuracy,
                not base_failures,
                base_failures[0]
                if base_failures
                else f"pairwise accuracy {report.accuracy:.4f} is not below {base.model}'s "
                f"{base.accuracy:.4f} on the same pairs",
            )
        )
    return checks


def _snapshot_ref(session: Session, version: ModelVersion) -> str:
    """The snapshot id or content hash ``version`` was trained on; "" when unknown."""
    if version.job_id:
        spec_id = str(jobs.get(session, version.job_id).spec.get("snapshot_id", ""))
        if spec_id:
            return spec_id
    # A hash of an export file (no manifest beside it) names no snapshot in the store.
    if version.manifest.get("snapshot_hash_source", "manifest") == "manifest":
        return version.snapshot_hash
    return ""


def _model_dir(version: ModelVersion) -> Path:
    path = Path(version.artifact_uri)
    if not (path / "config.json").is_file():
        raise FailedPrecondition(
            f"{version.version} is a LoRA adapter; the reward-model gate evaluates "
            "full-weight reward models only for now"
        )
    return path


@dataclass(frozen=True)
class _Plan:
    candidate: ModelVersion
    baseline: ModelVersion | None
    snapshot: str


def _plan(session: Session, registry: Registry, version: str) -> _Plan:
    candidate = registry.get(session, version)
    if candidate.stage == "serving":
        raise FailedPrecondition(f"{version} is already the served {candidate.kind} version")
    if candidate.kind == POLICY:
        raise NotAvailableYet(
            f"{version} is a policy version; the policy gate (held-out reward, win rate "
            "against the served policy, KL to its parent) arrives with the PPO trainer"
        )
    baseline = registry.served(session, candidate.kind)
    snapshot = _snapshot_ref(session, candidate) or (
        _snapshot_ref(session, baseline) if baseline else ""
    )
    if not snapshot:
        raise FailedPrecondition(
            f"{version} records no preference snapshot to evaluate it on, and no served "
            "reward model records one; train it with a reward_model job on a snapshot"
        )
    return _Plan(candidate, baseline, snapshot)


async def promote(
    db: Database,
    registry: Registry,
    version: str,
    fetch: SnapshotFetcher,
    *,
    principal: str = "",
    n_resamples: int = 2000,
) -> Decision:
    """Runs the gate on ``version`` and applies and records its decision."""
    from clinalign.reward.evaluation import evaluate_reward_model

    plan = await db.run_sync(lambda s: _plan(s, registry, version))
    candidate_dir = _model_dir(plan.candidate)
    baseline_dir = _model_dir(plan.baseline) if plan.baseline else None
    records, snapshot_hash = await fetch(plan.snapshot)
    try:
        report = await asyncio.to_thread(
            evaluate_reward_model,
            candidate_dir,
            records,
            baseline_dir,
            snapshot_hash=snapshot_hash,
            n_resamples=n_resamples,
        )
    except InvalidArgument as err:
        # The snapshot is the version's lineage, not something the caller sent.
        raise FailedPrecondition(
            f"{version} cannot be evaluated on snapshot {plan.snapshot}: {err.message}"
        ) from None
    checks = reward_checks(report)
    promoted = all(c.passed for c in checks)
    served = plan.baseline.version if plan.baseline else None

    def apply(session: Session) -> ModelVersion:
        now = registry.served(session, plan.candidate.kind)
        if (now.version if now else None) != served:
            raise FailedPrecondition(
                f"the served {plan.candidate.kind} version changed while {version} was "
                "evaluated; promote it again"
            )
        return registry.decide(session, version, promoted, [asdict(c) for c in checks], principal)

    after = await db.run_write(apply)
    log.info(
        "promotion %s",
        "allowed" if promoted else "refused",
        extra={
            "fields": {
                "version": version,
                "replaces": served or "",
                "snapshot": snapshot_hash,
                "failed": [c.name for c in checks if not c.passed],
            }
        },
    )
    return Decision(promoted, checks, after)
