"""The policy gate's checks (what each means: ``clinalign.trainer.registry.policy_gate``),
from two policies' answers to the validation prompts and the judges' readings of them.

Transport-free and model-free: the answers come in as ``Samples`` and the confirmed flags'
replayed answers through a passed-in function, so the decision rules are tested with
hand-made answers and judges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

from clinalign.common import stats
from clinalign.common.judging import SAFETY_CRITERIA, Assessment, Judge
from clinalign.trainer.registry.policy_gate import (
    CRITICAL_FLAG_REPLAY,
    KL_TO_ANCHOR,
    SAFETY_PREFIX,
    WIN_RATE_VS_SERVED,
    PolicyGateSettings,
    ReplayCase,
    Samples,
)


@dataclass(frozen=True)
class Check:
    """One figure the gate checked (the proto's ``GateCheck``)."""

    name: str
    value: float
    threshold: float
    passed: bool
    message: str


@dataclass(frozen=True)
class SafetySet:
    """Both policies' answers to a second prompt set that only the safety tests read
    (``gate_safety_prompt_set``), pooled with the validation prompts."""

    name: str
    prompts: Sequence[str]
    candidate: Samples
    baseline: Samples


def _ended(samples: Samples) -> str:
    return f"{fmean(samples.ended):.0%}" if samples.ended else "n/a"


async def judged_checks(
    judges: Sequence[Judge],
    prompts: Sequence[str],
    candidate: Samples,
    baseline: Samples,
    against: str,
    settings: PolicyGateSettings,
    safety: SafetySet | None = None,
) -> list[Check]:
    """The win-rate and safety checks of every judge; the safety tests also read
    ``safety``'s answers."""
    where = f"on {len(prompts)} {settings.prompt_set} prompts"
    safety_where = where
    if safety is not None:
        safety_where = f"{where} and {len(safety.prompts)} {safety.name} prompts"
    checks: list[Check] = []
    for judge in judges:
        points = await judge.compare(prompts, candidate.texts, baseline.texts)
        if points is not None:
            checks.append(_win_rate(judge, points, candidate, baseline, against, where, settings))
        cand = await judge.assess(prompts, candidate.texts)
        base = await judge.assess(prompts, baseline.texts)
        if safety is not None:
            cand = [*cand, *await judge.assess(safety.prompts, safety.candidate.texts)]
            base = [*base, *await judge.assess(safety.prompts, safety.baseline.texts)]
        checks += _safety(judge, cand, base, against, safety_where, settings)
    if not any(c.name.startswith(WIN_RATE_VS_SERVED) for c in checks):
        names = ", ".join(j.name for j in judges) or "none"
        checks.append(
            Check(
                WIN_RATE_VS_SERVED,
                0.0,
                settings.min_win_rate,
                False,
                f"no configured judge ranks answers (judges: {names}); add one to "
                "gate_judges, such as a reward model trained on another snapshot",
            )
        )
    return checks


def _win_rate(
    judge: Judge,
    points: list[float],
    candidate: Samples,
    baseline: Samples,
    against: str,
    where: str,
    settings: PolicyGateSettings,
) -> Check:
    rate = stats.win_rate(points, seed=settings.seed)
    passed = rate.low > settings.min_win_rate
    both = [p for p, c, b in zip(points, candidate.ended, baseline.ended, strict=True) if c and b]
    both_text = (
        f"; {fmean(both):.3f} on the {len(both)} prompts where both answers ended"
        if both
        else "; no prompt where both answers ended"
    )
    return Check(
        WIN_RATE_VS_SERVED,
        rate.estimate,
        settings.min_win_rate,
        passed,
        f"win rate {rate.describe()} against {against}, judged by {judge.name} {where}: "
        f"the lower bound {'is above' if passed else 'is not above'} {settings.min_win_rate}"
        f"{both_text}; answers ended: candidate {_ended(candidate)}, {against} "
        f"{_ended(baseline)}",
    )


def _safety(
    judge: Judge,
    candidate: list[Assessment],
    baseline: list[Assessment],
    against: str,
    where: str,
    settings: PolicyGateSettings,
) -> list[Check]:
    checks = []
    # the rubric's safety criteria, and any a judge declares its own (the cost model's)
    for criterion in (*SAFETY_CRITERIA, *getattr(judge, "safety_criteria", ())):
        cand = [a.criteria.get(criterion) for a in candidate]
        base = [a.criteria.get(criterion) for a in baseline]
        verdict = stats.non_inferiority(cand, base, settings.safety_margin, seed=settings.seed)
        if verdict is None:
            continue
        checks.append(
            Check(
                f"{SAFETY_PREFIX}{criterion}",
                verdict.difference.estimate,
                -settings.safety_margin,
                verdict.passed,
                f"{criterion}, judged by {judge.name} {where}: candidate against {against} "
                f"{verdict.describe()}",
            )
        )
    return checks


async def replay_check(
    judges: Sequence[Judge],
    cases: Sequence[ReplayCase],
    answers: Sequence[Sequence[str]],
    settings: PolicyGateSettings,
) -> Check:
    """Whether a confirmed fault recurs in the candidate's answers to its flagged prompt
    (``answers[i]``: the candidate's answers to ``cases[i].prompt``)."""
    recurring: list[str] = []
    worst = 0.0
    for case, replies in zip(cases, answers, strict=True):
        prompts = [case.prompt] * len(replies)
        share = 0.0
        pending = False
        for judge in judges:
            found = await judge.assess(prompts, replies)
            pending = pending or any(a.pending for a in found)
            share = max(share, fmean(case.category in a.faults for a in found) if found else 0.0)
        worst = max(worst, share)
        if pending:
            recurring.append(f"{case.flag_id} (awaiting a reviewer's verdict)")
        elif share > settings.replay_max_recurrence:
            recurring.append(f"{case.flag_id} ({case.category}, {share:.0%} of answers)")
    passed = not recurring
    names = ", ".join(j.name for j in judges)
    detail = (
        f"in none of {len(cases)} confirmed flags at or above {settings.replay_min_severity}"
        if passed
        else f"in {len(recurring)} of {len(cases)} confirmed flags: {'; '.join(recurring[:5])}"
        + (" …" if len(recurring) > 5 else "")
    )
    return Check(
        CRITICAL_FLAG_REPLAY,
        float(len(recurring)),
        0.0,
        passed,
        f"a confirmed fault recurs in more than {settings.replay_max_recurrence:.0%} of "
        f"{settings.replay_samples} answers {detail} (judged by {names}; worst case "
        f"{worst:.0%})",
    )


def kl_check(samples: Samples, anchor: str, settings: PolicyGateSettings) -> Check:
    kl = fmean(samples.kl_to_parent)
    within = kl <= settings.max_kl
    return Check(
        KL_TO_ANCHOR,
        kl,
        settings.max_kl,
        within,
        f"KL to {anchor}: {kl:.2f} nats per response "
        f"{'is within' if within else 'exceeds'} the bound {settings.max_kl}",
    )
