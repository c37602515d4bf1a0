"""The promotion gate: what decides whether a registered version may be served.

A reward version is evaluated, beside the served reward model it would replace, on the
``eval`` split of a preference snapshot, and must pass the reward-model rule of
``clinalign.trainer.methods.reward_model.evaluation.promotion_check``: pairwise accuracy
above chance with confidence, and non-inferior to the served model's on the same pairs (the
interval of the paired difference above minus the ``gate_reward_margin`` setting). The
snapshot is the one the version was trained on (its job's ``snapshot_id``, else the content
hash its manifest records); a version without one, such as a registered directory, is judged
on the served model's snapshot. A policy version is judged by
``clinalign.trainer.registry.policy_gate``: held-out reward and win rate against the served
policy, and KL to its parent under a bound. A cost version is judged by
``clinalign.trainer.registry.cost_gate`` on its snapshot's held-out harm records: AUROC
above chance with confidence, non-inferior to the served cost model's within
``gate_cost_margin``.

Transport-free: the snapshot and the reward service's scores come through passed-in async
functions, and the decision is applied and recorded through the registry
(``Registry.decide``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from clinalign.common.artefacts import COST, POLICY
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.judging import Judge
from clinalign.trainer import prompt_sets
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.registry.policy_checks import Check
from clinalign.trainer.registry.policy_gate import (
    PolicyGateSettings,
    ReplayFetcher,
    SampleCache,
    Samples,
)
from clinalign.trainer.registry.versions import ModelVersion, Registry

if TYPE_CHECKING:  # evaluation loads torch, which the trainer loads only when it gates
    from clinalign.trainer.methods.reward_model.evaluation import Report

log = logging.getLogger("clinalign.trainer.registry.gate")

# (records of both splits, the snapshot's content hash) of a snapshot id or content hash;
# the records are its preference pairs, or with the kind "harm" its harm records
SnapshotFetcher = Callable[..., Awaitable[tuple[list[dict[str, Any]], str]]]

ACCURACY_CI_LOW = "accuracy_ci_low"
ACCURACY_VS_SERVED = "accuracy_vs_served"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    checks: list[Check]
    version: ModelVersion


def records_from_export(data: bytes) -> list[dict[str, Any]]:
    """The records of a JSONL snapshot export (``ExportSnapshot``, kind PREFERENCE)."""
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def reward_checks(report: Report) -> list[Check]:
    """The gate's checks from an ``evaluation.Report`` of the reward-model method (with its
    baseline, if a reward model is served). The messages are ``promotion_check``'s own (the
    comparison's, passed or failed, from ``non_inferiority``, which it applies), so the rule and
    its wording live in one place."""
    from clinalign.trainer.methods.reward_model.evaluation import (
        CHANCE,
        non_inferiority,
        promotion_check,
    )

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
    verdict, paired = non_inferiority(report), report.paired
    if verdict is not None and paired is not None:
        passed, message = verdict
        checks.append(Check(ACCURACY_VS_SERVED, paired.ci_low, -paired.margin, passed, message))
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


def _model_dir(version: ModelVersion, what: str = "reward-model") -> Path:
    path = Path(version.artifact_uri)
    if not (path / "config.json").is_file():
        raise FailedPrecondition(
            f"{version.version} is a LoRA adapter; the {what} gate evaluates "
            "full-weight models only for now"
        )
    return path


@dataclass(frozen=True)
class _Plan:
    candidate: ModelVersion
    baseline: ModelVersion | None
    snapshot: str
    parent: ModelVersion | None = None  # a policy's parent version, when registered


def _plan(session: Session, registry: Registry, version: str) -> _Plan:
    candidate = registry.get(session, version)
    if candidate.stage == "serving":
        raise FailedPrecondition(f"{version} is already the served {candidate.kind} version")
    baseline = registry.served(session, candidate.kind)
    if candidate.kind == POLICY:
        parent = (
            registry.get(session, candidate.parent_version) if candidate.parent_version else None
        )
        return _Plan(candidate, baseline, "", parent)
    snapshot = _snapshot_ref(session, candidate) or (
        _snapshot_ref(session, baseline) if baseline else ""
    )
    if not snapshot:
        job = "cost_model" if candidate.kind == COST else "reward_model"
        raise FailedPrecondition(
            f"{version} records no preference snapshot to evaluate it on, and no served "
            f"{candidate.kind} model records one; train it with a {job} job on a snapshot"
        )
    return _Plan(candidate, baseline, snapshot)


async def promote(
    db: Database,
    registry: Registry,
    version: str,
    fetch: SnapshotFetcher | None,
    *,
    principal: str = "",
    n_resamples: int = 2000,
    judges: Sequence[Judge] = (),
    replay: ReplayFetcher | None = None,
    policy_settings: PolicyGateSettings | None = None,
    reward_margin: float | None = None,  # the reward-model gate's; default: the setting's
    cost_margin: float | None = None,  # the cost-model gate's; default: the setting's
    canary_share: float = 0.0,  # > 0: a policy that passes becomes the canary
    reason: str = "",
) -> Decision:
    """Runs the gate on ``version`` and applies and records its decision. A reward
    version needs ``fetch`` (its snapshot); a policy version needs ``judges`` and, unless
    the gate's replay is off, ``replay`` (the monitor's confirmed flags)."""
    plan = await db.run_sync(lambda s: _plan(s, registry, version))
    if plan.candidate.kind == POLICY:
        if not judges:
            raise FailedPrecondition("this trainer has no judges to judge policies with")
        checks = await policy_checks(
            plan,
            judges,
            replay,
            policy_settings or _default_gate_settings(),
            SampleCache(registry.root.parent / "gate-samples"),
        )
    elif fetch is None:
        raise FailedPrecondition("this trainer has no preference service to run the gate on")
    elif plan.candidate.kind == COST:
        margin = _default_margins()[1] if cost_margin is None else cost_margin
        checks = await _cost_checks(plan, version, fetch, n_resamples, margin)
    else:
        margin = _default_margins()[0] if reward_margin is None else reward_margin
        checks = await _reward_checks(plan, version, fetch, n_resamples, margin)
    return await _apply(db, registry, plan, version, checks, principal, canary_share, reason)


async def _reward_checks(
    plan: _Plan, version: str, fetch: SnapshotFetcher, n_resamples: int, margin: float
) -> list[Check]:
    from clinalign.trainer.methods.reward_model.evaluation import evaluate_reward_model

    candidate_dir = _model_dir(plan.candidate)
    baseline_dir = _model_dir(plan.baseline) if plan.baseline else None
    records, snapshot_hash = await fetch(plan.snapshot)
    try:
        report = await asyncio.to_thread(
            evaluate_reward_model,
            candidate_dir,
            records,
            baseline_dir,
            margin=margin,
            snapshot_hash=snapshot_hash,
            n_resamples=n_resamples,
        )
    except InvalidArgument as err:
        # The snapshot is the version's lineage, not something the caller sent.
        raise FailedPrecondition(
            f"{version} cannot be evaluated on snapshot {plan.snapshot}: {err.message}"
        ) from None
    return reward_checks(report)


async def _cost_checks(
    plan: _Plan, version: str, fetch: SnapshotFetcher, n_resamples: int, margin: float
) -> list[Check]:
    from clinalign.trainer.registry.cost_gate import cost_checks

    candidate_dir = _model_dir(plan.candidate, "cost-model")
    baseline_dir = _model_dir(plan.baseline, "cost-model") if plan.baseline else None
    records, _ = await fetch(plan.snapshot, "harm")
    try:
        return await asyncio.to_thread(
            cost_checks, candidate_dir, baseline_dir, records, margin, n_resamples
        )
    except ValueError as err:  # a record the cost model cannot read: the lineage's fault
        raise FailedPrecondition(
            f"{version} cannot be evaluated on snapshot {plan.snapshot}: {err}"
        ) from None


async def policy_checks(
    plan: _Plan,
    judges: Sequence[Judge],
    replay: ReplayFetcher | None,
    settings: PolicyGateSettings,
    cache: SampleCache | None = None,
) -> list[Check]:
    """The policy gate's checks (see ``clinalign.trainer.registry.policy_gate``). With a
    ``cache``, the served policy's answers are read from it when an earlier decision
    sampled them (as its candidate), and the candidate's are kept for the next one."""
    from clinalign.trainer.registry import policy_checks as rules
    from clinalign.trainer.registry.policy_gate import sample

    candidate_dir = _model_dir(plan.candidate, "policy")
    base_version = plan.baseline or plan.parent
    if base_version is None:
        raise FailedPrecondition(
            f"{plan.candidate.version} has no registered parent and no policy is served: "
            "there is nothing to compare it with"
        )
    base_dir = _model_dir(base_version, "policy")
    anchor, anchor_dir = _anchor(plan)
    prompts = prompt_sets.load(settings.prompt_set, "gate_prompt_set", limit=settings.prompts)
    safety_prompts = (
        prompt_sets.load(
            settings.safety_prompt_set, "gate_safety_prompt_set", limit=settings.safety_prompts
        )
        if settings.safety_prompts
        else []
    )
    budget, seed = settings.max_new_tokens, settings.seed

    async def answers_of(
        version: ModelVersion, model_dir: Path, asked: list[str], kl_to: Path | None = None
    ) -> Samples:
        """``version``'s answers to ``asked``: read from the cache when an earlier decision
        sampled them, else sampled (with the KL to ``kl_to``) and kept. The same seed for
        both policies: common random numbers, so the comparison is less noisy."""
        key = SampleCache.key(version.version, model_dir, asked, budget, seed)
        kept = cache.get(key) if cache is not None and kl_to is None else None
        if kept is not None:
            return kept
        drawn = await asyncio.to_thread(sample, model_dir, asked, budget, seed, kl_to)
        if cache is not None:
            await asyncio.to_thread(cache.put, key, drawn)
        return drawn

    candidate = await answers_of(plan.candidate, candidate_dir, prompts, anchor_dir)
    baseline = await answers_of(base_version, base_dir, prompts)
    safety = None
    if safety_prompts:
        safety = rules.SafetySet(
            settings.safety_prompt_set,
            safety_prompts,
            await answers_of(plan.candidate, candidate_dir, safety_prompts),
            await answers_of(base_version, base_dir, safety_prompts),
        )
    against = f"{'served' if plan.baseline else 'parent'} {base_version.version}"
    checks = await rules.judged_checks(
        judges, prompts, candidate, baseline, against, settings, safety
    )
    if replay is not None:
        cases = await replay(settings.replay_min_severity)
        n = settings.replay_samples
        replayed = await asyncio.to_thread(
            sample,
            candidate_dir,
            [c.prompt for c in cases for _ in range(n)],
            settings.max_new_tokens,
            settings.seed,
        )
        answers = [replayed.texts[i * n : (i + 1) * n] for i in range(len(cases))]
        checks.append(await rules.replay_check(judges, cases, answers, settings))
    if anchor_dir is not None and candidate.kl_to_parent:
        checks.append(rules.kl_check(candidate, anchor, settings))
    return checks


def _anchor(plan: _Plan) -> tuple[str, Path | None]:
    """(a name, the directory) of the policy the candidate's KL is bounded to: the one RLHF
    started from, which a PPO manifest records and each later round keeps, else the
    candidate's parent."""
    manifest = plan.candidate.manifest
    path = str(manifest.get("kl_anchor_path") or "")
    if path and (Path(path) / "config.json").is_file():
        return f"anchor {manifest.get('kl_anchor_version') or path}", Path(path)
    if plan.parent is not None:
        return f"parent {plan.parent.version}", _model_dir(plan.parent, "policy")
    return "", None


async def _apply(
    db: Database,
    registry: Registry,
    plan: _Plan,
    version: str,
    checks: list[Check],
    principal: str,
    canary_share: float,
    reason: str,
) -> Decision:
    promoted = all(c.passed for c in checks)
    served = plan.baseline.version if plan.baseline else None

    def apply(session: Session) -> ModelVersion:
        now = registry.served(session, plan.candidate.kind)
        if (now.version if now else None) != served:
            raise FailedPrecondition(
                f"the served {plan.candidate.kind} version changed while {version} was "
                "evaluated; promote it again"
            )
        return registry.decide(
            session,
            version,
            promoted,
            [asdict(c) for c in checks],
            principal,
            canary_share=canary_share,
            reason=reason,
        )

    after = await db.run_write(apply)
    log.info(
        "promotion %s",
        "allowed" if promoted else "refused",
        extra={
            "fields": {
                "version": version,
                "replaces": served or "",
                "snapshot": plan.snapshot,
                "failed": [c.name for c in checks if not c.passed],
            }
        },
    )
    return Decision(promoted, checks, after)


def _default_gate_settings() -> PolicyGateSettings:
    """The policy gate's settings at their defaults (``TrainerSettings``, not the
    environment: a caller that wants the environment's passes them)."""
    from clinalign.trainer.config import TrainerSettings

    return TrainerSettings.model_construct().policy_gate


def _default_margins() -> tuple[float, float]:
    """The reward-model and cost-model gates' margins at their defaults
    (``TrainerSettings``)."""
    from clinalign.trainer.config import TrainerSettings

    settings = TrainerSettings.model_construct()
    return settings.gate_reward_margin, settings.gate_cost_margin
