"""Bradley-Terry preference modelling: loss, probability, and the statistics the reward
model's training and evaluation report. Small pure functions; ``b_`` indexes pairs of a
batch, ``r_`` single responses.

A reward model r assigns each (prompt, response) a scalar; the Bradley-Terry model
(Bradley & Terry 1952, "Rank analysis of incomplete block designs: I. The method of paired
comparisons", Biometrika 39) says a labeller prefers y_c over y_r with probability
sigmoid(r(x, y_c) - r(x, y_r)). Fitting r by maximum likelihood on labelled pairs is the reward
model loss of Ouyang et al. 2022 (InstructGPT, eq. 1) and Stiennon et al. 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

TIE_TARGET = 0.5  # a tie says each response is preferred with probability one half


def bt_probability(b_reward_chosen: torch.Tensor, b_reward_rejected: torch.Tensor) -> torch.Tensor:
    """P(chosen ≻ rejected) = sigmoid(r_c - r_r). Shapes (B,) → (B,)."""
    return torch.sigmoid(b_reward_chosen - b_reward_rejected)


def bt_loss(
    b_reward_chosen: torch.Tensor,
    b_reward_rejected: torch.Tensor,
    b_target: torch.Tensor | None = None,
    b_margin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean negative log-likelihood of the labels under Bradley-Terry, with soft labels.

    ``b_target`` (B,) is the probability y that ``chosen`` is preferred: 1 for an ordinary
    label, which gives the InstructGPT eq. 1 loss -log sigmoid(Δ); 0.5 for a tie. The loss
    -(y·log sigmoid(Δ) + (1-y)·log sigmoid(-Δ)) is the binary cross-entropy of sigmoid(Δ)
    against y, minimised at Δ = 0 for a tie, which pulls the two rewards together instead
    of being thrown away. ``b_margin`` (B,) is subtracted from Δ as in
    Llama 2's margin loss (Touvron et al. 2023, eq. 2); TRL's ``RewardTrainer`` does the
    same with its ``margin`` column. Shapes (B,), (B,), (B,), (B,) → ().
    """
    b_delta = b_reward_chosen - b_reward_rejected  # (B,)
    if b_margin is not None:
        b_delta = b_delta - b_margin
    if b_target is None:
        return -F.logsigmoid(b_delta).mean()
    b_nll = -(b_target * F.logsigmoid(b_delta) + (1.0 - b_target) * F.logsigmoid(-b_delta))
    return b_nll.mean()


def centring_penalty(
    b_reward_chosen: torch.Tensor, b_reward_rejected: torch.Tensor
) -> torch.Tensor:
    """mean((r_c + r_r)²): the auxiliary term of Eisenstein et al. 2023 (eq. 2) that keeps
    the rewards centred on zero, which the Bradley-Terry loss alone leaves free (it sees
    only differences). TRL's ``RewardTrainer`` adds it times ``center_rewards_coefficient``.
    Shapes (B,), (B,) → ()."""
    return torch.mean((b_reward_chosen + b_reward_rejected) ** 2)


def pairwise_correct(b_delta: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per pair: 1 when the chosen response scores higher, 0 when lower, 0.5 when equal
    (the expected score of breaking the tie at random). Shape (B,) → (B,)."""
    b_delta = np.asarray(b_delta, dtype=np.float64)
    return np.where(b_delta > 0, 1.0, np.where(b_delta < 0, 0.0, 0.5))


def normalisation_stats(r_rewards: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(mean, std) of raw rewards, std with the population (1/n) denominator as in
    lm-human-preferences' reward normalisation (``tf.nn.moments``; Ziegler et al. 2019):
    after subtracting the mean and dividing by the std the responses these rewards came
    from score mean 0, std 1. A zero std (all rewards equal) is returned as 1 so that
    normalising stays a shift instead of a division by zero. Shape (N,) → (), ()."""
    r = np.asarray(r_rewards, dtype=np.float64)
    if r.size == 0:
        raise ValueError("normalisation needs at least one reward")
    std = float(r.std())
    return float(r.mean()), std if std > 0 else 1.0


def expected_calibration_error(
    b_prob_chosen: Sequence[float] | np.ndarray,
    b_target: Sequence[float] | np.ndarray,
    n_bins: int = 10,
) -> float:
    """Expected calibration error of Bradley-Terry probabilities (Naeini et al. 2015;
    Guo et al. 2017): Σ_bins |bin| / N · |mean target - mean probability|, over
    ``n_bins`` equal-width bins of [0, 1] (a probability of exactly 1 joins the last bin).

    A snapshot always lists the preferred response as ``chosen``, so with one orientation
    every target would be 1 and the measure would only reward confidence. Each pair is
    therefore counted in both orientations: (p, y) and (1 - p, 1 - y), where y is 1 for a
    label and 0.5 for a tie. N is twice the number of pairs, and the figure does not depend
    on which response a snapshot happened to call ``chosen``. Shapes (B,), (B,) → ().
    """
    p = np.asarray(b_prob_chosen, dtype=np.float64)
    y = np.asarray(b_target, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError("probabilities and targets must be 1-D and the same length")
    if p.size == 0:
        raise ValueError("calibration needs at least one pair")
    p2, y2 = np.concatenate([p, 1.0 - p]), np.concatenate([y, 1.0 - y])  # (2B,)
    bins = np.clip(np.floor(p2 * n_bins).astype(np.int64), 0, n_bins - 1)  # (2B,)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(y2[in_bin].mean() - p2[in_bin].mean())
    return float(ece)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    groups: Sequence[str] | None = None,
    *,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of ``values`` (Efron & Tibshirani 1993,
    ch. 13), seeded so that a report is reproducible.

    With ``groups`` (one id per value, such as the prompt id) whole groups are resampled
    (a cluster bootstrap): pairs about the same prompt are not independent evidence, and
    resampling them one by one would give too narrow an interval. Each resample's mean is
    the ratio of its groups' sums to their counts.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("a confidence interval needs at least one value")
    g_sum: np.ndarray
    g_count: np.ndarray
    if groups is None:
        g_sum, g_count = v, np.ones_like(v)  # (G,) with G = N
    else:
        _, g_index = np.unique(np.asarray(groups), return_inverse=True)
        g_sum = np.bincount(g_index, weights=v)  # (G,)
        g_count = np.bincount(g_index, weights=np.ones_like(v))  # (G,)
    rng = np.random.default_rng(seed)
    s_index = rng.integers(0, g_sum.size, size=(n_resamples, g_sum.size))  # (S, G)
    s_mean = g_sum[s_index].sum(axis=1) / g_count[s_index].sum(axis=1)  # (S,)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(s_mean, [alpha, 1.0 - alpha])
    return float(low), float(high)


def head_init_std(d_model: int) -> float:
    """Standard deviation of the reward head's initial weights, 1/√(d_model + 1), from
    OpenAI's lm-human-preferences (``language/model.py``, the scalar heads; kept by
    Stiennon et al. 2020 and listed in Huang et al. 2023, "The N implementation details of
    RLHF with PPO"). With unit-variance final hidden states the initial reward then has
    variance about 1, whatever the width, instead of growing with d_model."""
    return 1.0 / math.sqrt(d_model + 1)
