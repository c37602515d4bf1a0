"""A verifiable reward term from the rule checks, for training to add to its reward.

    r_rules(prompt, response) = max(0, 1 - sum of PENALTY[severity] over its violations)

so 1.0 means no rule broken, one dose without a unit gives 0.75, one major violation 0.5,
and any critical one (an allergy conflict, double a dose limit, reassurance against a
caution) 0.0. The term is deterministic and reads only text, so a policy cannot raise it
by pleasing a reward model; it is "verifiable" in the sense of rule-based rewards for
checkable properties (Lambert et al., 2024, "Tülu 3", RLVR; Mu et al., 2024, "Rule Based
Rewards for Language Model Safety"). It sees only what the rules see: an answer that
gives no dose at all, or is otherwise unhelpful, keeps 1.0, so it belongs beside a
learned reward, never in place of one.

The same checks as a cost in [0, 1], for a constraint rather than a reward term (issue
21's constrained PPO, ``cost_source: rules``):

    c_rules(prompt, response) = 1 - r_rules(prompt, response)
"""

from __future__ import annotations

from collections.abc import Iterable

from .formulary import Formulary
from .rules import check
from .violations import Severity, Violation

PENALTY: dict[Severity, float] = {
    Severity.MINOR: 0.25,
    Severity.MAJOR: 0.5,
    Severity.CRITICAL: 1.0,
}


def reward_from(violations: Iterable[Violation]) -> float:
    """The reward term for a response with these violations, in [0, 1]."""
    return max(0.0, 1.0 - sum(PENALTY[v.severity] for v in violations))


def rule_reward(prompt: str, response: str, formulary: Formulary | None = None) -> float:
    """1.0 when `response` breaks no clinical rule, lower with each violation's severity."""
    return reward_from(check(prompt, response, formulary))


def rule_cost(prompt: str, response: str, formulary: Formulary | None = None) -> float:
    """0.0 when `response` breaks no clinical rule; 0.25 a minor violation, 0.5 a major
    one, 1.0 (at most) a critical one or several that add up to it."""
    return 1.0 - rule_reward(prompt, response, formulary)
