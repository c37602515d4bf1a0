"""PPO's logging phase: an iteration's figures (IMPLEMENTATION_DETAILS.md, "Logged
statistics"), averaged over processes, then β adapted and the iteration recorded in the
loop state."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator

from clinalign.trainer.methods.ppo import constraint, core
from clinalign.trainer.methods.ppo.checkpoint import LoopState
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.rollout import Rollout
from clinalign.trainer.methods.ppo.scoring import Advantages, Evaluation


def iteration_figures(
    b_scores: torch.Tensor,
    b_finished: torch.Tensor,
    rollout: Rollout,
    evaluation: Evaluation,
    advantages: Advantages,
    optimisation: dict[str, float],
    has_values: bool,
) -> dict[str, float]:
    """One process's figures of an iteration: batch means of the score (``rm_score`` over
    the finished responses only, NaN when none finished), the KL penalty and KL per
    response, rollout entropy, response length, the share that ended, the critic's
    explained variance (NaN without one), then the optimisation's figures. ``b_scores`` and
    ``b_finished`` [B], the rest as their phases give them."""
    b_mask = rollout.response_mask  # [B, T]
    f_scores = b_scores[b_finished.to(b_scores.device)]  # [F]
    b_non_score = advantages.non_score.sum(dim=1)  # [B]
    return {
        "score": float(b_scores.mean()),
        "rm_score": float(f_scores.mean()) if f_scores.numel() else math.nan,
        "non_score_reward": float(b_non_score.mean()),
        "reward": float((b_scores + b_non_score).mean()),
        "kl": float(advantages.kl.sum(dim=1).mean()),
        "entropy_rollout": float(evaluation.entropy),
        "response_length": float(b_mask.sum(dim=1).float().mean()),
        "ended_frac": float(rollout.ended.float().mean()),
        "explained_variance": core.explained_variance(evaluation.values, advantages.returns, b_mask)
        if has_values
        else math.nan,
        **optimisation,
    }


def mean_over_processes(accelerator: Accelerator, figures: dict[str, float]) -> dict[str, float]:
    """Each figure's mean over the processes, NaN-aware: a process with no finished response
    has no ``rm_score``. Keys come back sorted under more than one process."""
    if accelerator.num_processes == 1:
        return dict(figures)
    keys = sorted(figures)
    local = torch.tensor([figures[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    present = (~torch.isnan(local)).to(torch.float64)
    total = accelerator.reduce(torch.nan_to_num(local), reduction="sum")
    count = accelerator.reduce(present, reduction="sum")
    means = torch.where(count > 0, total / count.clamp(min=1), torch.nan)
    return {k: float(v) for k, v in zip(keys, means.tolist(), strict=True)}


def record_iteration(
    state: LoopState,
    kl_ctl: core.FixedKLController | core.AdaptiveKLController,
    figures: dict[str, float],
    hyper: PPOHyperparameters,
    learning_rate: float,
    iteration_s: float,
) -> dict[str, float]:
    """Adds β (the one this iteration used), the learning rate, episodes so far and the
    iteration's duration to ``figures``, adapts β to the batch's mean KL per response
    (Ziegler et al. 2019 §2.2: n_steps = the batch's episodes), steps the cost
    constraint's λ by dual ascent on the batch's expected cost (``constraint.dual_ascent``;
    ``lagrange_multiplier`` is the λ this iteration used), and appends the figures to the
    loop state's history, one iteration on. Returns the figures."""
    figures["kl_coef"] = kl_ctl.value
    kl_ctl.update(figures["kl"], hyper.rollout_batch_size)
    state.kl_coef = kl_ctl.value
    if hyper.cost_source != "none":
        figures["lagrange_multiplier"] = state.multiplier
        state.multiplier = constraint.dual_ascent(
            state.multiplier,
            figures["cost"],
            hyper.cost_budget,
            hyper.lagrangian_lr,
            hyper.lagrangian_max,
        )
    state.iteration += 1
    figures["learning_rate"] = learning_rate
    figures["episodes"] = float(state.iteration * hyper.rollout_batch_size)
    figures["iteration_s"] = iteration_s
    state.history.append([state.iteration, figures])
    return figures
