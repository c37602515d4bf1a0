"""Safety-constrained policy optimisation (issue 21): maximise the reward subject to an
expected-cost budget,

    max_θ  E[R(x, y)]   subject to   J_C(θ) = E[C(x, y)] ≤ d,

solved through its Lagrangian  min_{λ ≥ 0} max_θ  E[R] - λ·(J_C - d)  by alternating a PPO
step on the policy with λ fixed and a dual-ascent step on λ with the policy fixed: the
PPO-Lagrangian of Ray, Achiam & Amodei 2019 ("Benchmarking Safe Exploration in Deep
Reinforcement Learning", §5.2) as Safe RLHF applies it to language models (Dai et al. 2023,
"Safe RLHF: Safe Reinforcement Learning from Human Feedback", arXiv:2310.12773, §3.3).

The pieces, each a pure function tested value by value (``tests/unit/test_ppo_constraint.py``;
IMPLEMENTATION_DETAILS.md, "The cost constraint"):

- ``lagrangian_scores``: a finished response's score becomes (R - λ·C)/(1 + λ). Safe RLHF
  mixes the reward and cost advantages as (A_R - λ·A_C)/(1 + λ); ClinAlign's advantages are
  linear in the sequence score (rloo's leave-one-out differences, GAE on a score at the last
  token), so mixing the scores mixes the advantages, and the division keeps the mixed
  score on the reward's scale however large λ grows. The KL penalty is not divided: its
  weight against the policy's drift stays β.
- ``expected_cost``: Ĵ_C, the batch mean of the finished responses' costs.
- ``dual_ascent``: λ ← clip(λ + alpha·(Ĵ_C - d), 0, λ_max), projected gradient ascent on the
  Lagrangian in λ (Ray et al. 2019, Stooke et al. 2020 "Responsive Safety in Reinforcement
  Learning by PID Lagrangian Methods" eq. 2 with K_I = alpha). Safe RLHF steps log λ instead
  (ln λ ← ln λ + alpha·λ·(Ĵ_C - d)), which can never reach 0; here a budget the policy keeps
  lets λ fall to 0, leaving plain reward maximisation.

Shapes: B responses of a rollout batch; ``b_finished`` marks those that ended with some
text (``core.finished_responses``); the rest keep their fixed penalty and no cost.
"""

from __future__ import annotations

import math

import torch

HARMFUL = 0.5  # a response costing this much is counted in ``harmful_frac``


def lagrangian_scores(
    b_scores: torch.Tensor, b_costs: torch.Tensor, b_finished: torch.Tensor, multiplier: float
) -> torch.Tensor:
    """(R - λ·C)/(1 + λ) for the finished responses; the unfinished keep their score (the
    fixed ``missing_eos_penalty``). [B] scores, [B] costs, [B] bool, λ ≥ 0 → [B]."""
    if multiplier < 0 or not math.isfinite(multiplier):
        raise ValueError(f"the multiplier must be finite and non-negative, got {multiplier}")
    if b_scores.shape != b_costs.shape or b_scores.shape != b_finished.shape:
        raise ValueError(
            f"scores {tuple(b_scores.shape)}, costs {tuple(b_costs.shape)} and finished "
            f"{tuple(b_finished.shape)} must have the same shape"
        )
    mixed = (b_scores - multiplier * b_costs) / (1.0 + multiplier)
    return torch.where(b_finished.to(b_scores.device), mixed, b_scores)


def expected_cost(b_costs: torch.Tensor, b_finished: torch.Tensor) -> float:
    """Ĵ_C: the mean cost of the finished responses; NaN when none finished (the batch says
    nothing about the constraint)."""
    f_costs = b_costs[b_finished.to(b_costs.device)]  # [F]
    return float(f_costs.mean()) if f_costs.numel() else math.nan


def dual_ascent(
    multiplier: float, cost: float, budget: float, learning_rate: float, maximum: float
) -> float:
    """The next λ: clip(λ + alpha·(Ĵ_C - d), 0, λ_max). A batch with no finished response
    (Ĵ_C NaN) leaves λ as it is; alpha = 0 keeps λ fixed (a constant cost penalty)."""
    if math.isnan(cost):
        return multiplier
    return min(max(multiplier + learning_rate * (cost - budget), 0.0), maximum)


def constraint_figures(
    b_mixed: torch.Tensor, b_costs: torch.Tensor, b_finished: torch.Tensor, budget: float
) -> dict[str, float]:
    """One process's logged figures of the constraint: the expected cost Ĵ_C, its excess
    over the budget (negative: slack: the constraint is violated when it is positive), the
    share of finished responses costing at least ``HARMFUL`` (a major rule violation, or a
    cost model's more-likely-than-not harm), and the mean Lagrangian score the advantages
    were computed from."""
    f_costs = b_costs[b_finished.to(b_costs.device)]  # [F]
    cost = expected_cost(b_costs, b_finished)
    return {
        "cost": cost,
        "cost_excess": cost - budget,
        "harmful_frac": float((f_costs >= HARMFUL).float().mean()) if f_costs.numel() else math.nan,
        "lagrangian_score": float(b_mixed.mean()),
    }
