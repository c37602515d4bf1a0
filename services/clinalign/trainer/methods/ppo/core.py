"""The maths of PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022) as small pure
torch functions. The trainer loop calls these; IMPLEMENTATION_DETAILS.md lists every choice.

Shapes: B responses in a rollout batch, MB in a minibatch, T response tokens (right-padded),
V vocabulary, F the finished responses of a batch. ``b_`` names index the whole rollout
batch, ``mb_`` a minibatch of it, as in CleanRL's ``ppo.py``, and ``f_`` its finished
responses. A ``mask`` is 1 (or True) on response tokens up to and including the
last one kept (EOS or the truncation point) and 0 on the padding after it; masks are right
padded, so each row is a run of ones followed by zeros.

Reference implementations cited below:
- lm-human-preferences: openai/lm-human-preferences ``train_policy.py`` (Ziegler et al. 2019)
- TRL: huggingface/trl ``trl/trainer/ppo_trainer.py`` and ``trl/trainer/utils.py`` (PPOv2)
- CleanRL: vwxyzjn/cleanrl ``cleanrl/ppo.py``
- N details: Huang et al. 2023, "The N Implementation Details of RLHF with PPO"
"""

from __future__ import annotations

import math
from typing import Literal

import torch

WHITEN_EPS = 1e-8  # added to the variance before rsqrt (lm-human-preferences, TRL)
# proportional-error clip of the adaptive KL controller (Ziegler et al. 2019 §2.2)
KL_ERROR_CLIP = 0.2


# -- validation ----------------------------------------------------------------------------


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}; these must have the same shape")


def _right_padded(mask: torch.Tensor) -> None:
    """A mask must be 2-D, ones then zeros in every row, with at least one one."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    m = mask.to(torch.int8)
    if (m[:, 1:] > m[:, :-1]).any():
        raise ValueError("mask must be right-padded: ones then zeros in every row")
    if (m[:, 0] == 0).any():
        raise ValueError("every response needs at least one unmasked token")


# -- log-probabilities and masked statistics -------------------------------------------------


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log π(token_t | ...) for each position. logits [B, T, V], tokens [B, T] → [B, T].

    The logits are divided by the sampling temperature first, so that the log-probabilities
    are those of the distribution the rollout actually sampled from (N details, "Scale the
    logits by sampling temperature"). In fp32/fp64 this gathers the chosen logit and
    subtracts the logsumexp without materialising a [B, T, V] log-softmax, as TRL's
    ``selective_log_softmax``; lower precisions go row by row through ``log_softmax``,
    where that subtraction loses too much.
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [B, T, V] and tokens [B, T], got {tuple(logits.shape)} and "
            f"{tuple(tokens.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = logits / temperature
    index = tokens.long().unsqueeze(-1)  # [B, T, 1]
    if logits.dtype in (torch.float32, torch.float64):
        chosen = torch.gather(logits, -1, index).squeeze(-1)  # [B, T]
        return chosen - torch.logsumexp(logits, dim=-1)
    rows = [
        torch.gather(torch.log_softmax(row, dim=-1), -1, row_index).squeeze(-1)
        for row, row_index in zip(logits, index, strict=True)
    ]  # B tensors [T]
    return torch.stack(rows)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the unmasked entries, of everything or along ``dim`` (TRL ``masked_mean``)."""
    _same_shape(values=values, mask=mask)
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the unmasked entries, with Bessel's correction n/(n-1) by default as in
    TRL ``masked_var``. (lm-human-preferences uses ``tf.nn.moments``, the biased 1/n
    variance; N details, "TensorFlow vs PyTorch note".) Shape [...] → ()."""
    _same_shape(values=values, mask=mask)
    n = mask.to(values.dtype).sum()
    if n == 0:
        raise ValueError("masked_var: the mask selects no entries")
    if unbiased and n == 1:
        raise ValueError("masked_var: an unbiased variance needs at least two unmasked entries")
    centred = values - masked_mean(values, mask)
    var = masked_mean(centred**2, mask)
    return var * n / (n - 1) if unbiased else var


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, unbiased: bool = True
) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the unmasked entries (lm-human-preferences
    ``whiten``; TRL ``masked_whiten``). With ``shift_mean=False`` the mean is added back, so
    only the scale changes (how lm-human-preferences whitens rewards). Masked entries are
    transformed too; callers zero them if they need to. Shape [...] → [...]."""
    mean, var = masked_mean(values, mask), masked_var(values, mask, unbiased=unbiased)
    whitened = (values - mean) * torch.rsqrt(var + WHITEN_EPS)
    return whitened if shift_mean else whitened + mean


# -- KL and rewards ---------------------------------------------------------------------------


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log π(y) - log π_ref(y), unbiased for KL(π ‖ π_ref) on samples y ~ π but can be
    negative per token (Schulman 2020, "Approximating KL Divergence"). [B, T] → [B, T]."""
    _same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = r - log r - 1 with r = π_ref(y)/π(y): unbiased for KL(π ‖ π_ref) on samples
    y ~ π and never negative (Schulman 2020, "Approximating KL Divergence"). [B, T] → [B, T]."""
    _same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_r = ref_logprobs - logprobs
    return torch.exp(log_r) - log_r - 1.0


def finished_responses(b_ended: torch.Tensor, b_blank: torch.Tensor) -> torch.Tensor:
    """The responses the reward model scores: those that ended (an EOS within the response
    length) with some text before the EOS. A response that never ended is cut off mid-answer
    (Ziegler et al. 2019, "Rejection sampling" in N details); one that is blank (EOS first,
    or only whitespace) has nothing a reward model can read (a ClinAlign choice). Shapes
    [B] bool, [B] bool → [B] bool."""
    _same_shape(b_ended=b_ended, b_blank=b_blank)
    return b_ended.bool() & ~b_blank.bool()


def penalise_unfinished(
    f_scores: torch.Tensor, b_finished: torch.Tensor, penalty: float
) -> torch.Tensor:
    """The sequence scores of a rollout batch in which only the F finished responses
    (``finished_responses``) were scored: each finished response gets its score from
    ``f_scores`` (in row order), every other response the fixed value ``penalty`` instead,
    without the reward model being asked. Ziegler et al. 2019 give continuations that do
    not end "a fixed reward of -1" in place of the reward model's
    (lm-human-preferences ``penalty_reward_value``; N details, "Rejection sampling"), which
    scores every response and then replaces; asking only about the finished ones gives the
    same scores with fewer reward-service calls. TRL's current ``missing_eos_penalty``
    subtracts from the score instead of replacing it. Shapes [F], [B] bool → [B]."""
    if b_finished.dim() != 1 or b_finished.dtype != torch.bool:
        raise ValueError(
            f"b_finished must be a [B] bool tensor, got {b_finished.dtype} "
            f"{tuple(b_finished.shape)}"
        )
    n_finished = int(b_finished.sum())
    if tuple(f_scores.shape) != (n_finished,):
        raise ValueError(
            f"f_scores must be [F] with F={n_finished} finished responses, "
            f"got shape {tuple(f_scores.shape)}"
        )
    b_scores = torch.full(
        b_finished.shape, penalty, dtype=f_scores.dtype, device=f_scores.device
    )  # [B]
    b_scores[b_finished.to(f_scores.device)] = f_scores
    return b_scores


def token_rewards(
    b_scores: torch.Tensor,
    b_logprobs: torch.Tensor,
    b_ref_logprobs: torch.Tensor,
    b_mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: Literal["k1", "k3"] = "k1",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -β·KL_t, plus the sequence score at the last response token.

    This is the reward R(x, y) = r(x, y) - β log(π(y|x)/π_ref(y|x)) of Ziegler et al. 2019 §2
    (also Stiennon et al. 2020; Ouyang et al. 2022 eq. 2) spread over tokens as in
    lm-human-preferences ``train_policy.py`` (N details, "Per-token KL penalty"): the KL
    term at every token, the reward-model score only where the episode ends. Padding gets
    zero reward and zero KL. Shapes [B], [B, T], [B, T], [B, T] →
    (rewards [B, T], non_score [B, T], kl [B, T]).
    """
    _same_shape(b_logprobs=b_logprobs, b_ref_logprobs=b_ref_logprobs, b_mask=b_mask)
    _right_padded(b_mask)
    if b_scores.shape != b_mask.shape[:1]:
        raise ValueError(
            f"b_scores must be [B] with B={b_mask.shape[0]}, got shape {tuple(b_scores.shape)}"
        )
    estimator = {"k1": kl_k1, "k3": kl_k3}.get(kl_estimator)
    if estimator is None:
        raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {kl_estimator!r}")
    mask = b_mask.to(b_logprobs.dtype)
    b_kl = estimator(b_logprobs, b_ref_logprobs) * mask  # [B, T]
    b_non_score = -kl_coef * b_kl  # [B, T]
    b_last = b_mask.to(torch.long).sum(dim=1) - 1  # [B] index of the last response token
    b_rewards = b_non_score.clone()
    b_rewards[torch.arange(b_rewards.shape[0]), b_last] += b_scores.to(b_rewards.dtype)
    return b_rewards, b_non_score, b_kl


# -- advantages -------------------------------------------------------------------------------


def gae_reference(
    b_rewards: torch.Tensor, b_values: torch.Tensor, b_mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) by the reverse loop of
    lm-human-preferences / TRL / CleanRL: δ_t = r_t + gamma·V_{t+1} - V_t and
    A_t = δ_t + gamma·lam·A_{t+1}.
    The state after the last response token is terminal (V = 0), and padding contributes
    nothing: rewards, values and advantages there count as zero. Returns are A + V on response
    tokens, 0 on padding. The plain version that ``gae`` is checked against.
    Shapes [B, T] (three) → (advantages [B, T], returns [B, T])."""
    _same_shape(b_rewards=b_rewards, b_values=b_values, b_mask=b_mask)
    _right_padded(b_mask)
    mask = b_mask.to(b_values.dtype)
    values = b_values * mask
    n_tokens = b_rewards.shape[1]
    last_gae = torch.zeros_like(b_rewards[:, 0])  # [B]
    reversed_advantages = []
    for t in reversed(range(n_tokens)):
        next_values = values[:, t + 1] if t < n_tokens - 1 else torch.zeros_like(last_gae)
        delta = b_rewards[:, t] * mask[:, t] + gamma * next_values - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]
        reversed_advantages.append(last_gae)
    b_advantages = torch.stack(reversed_advantages[::-1], dim=1)  # [B, T]
    return b_advantages, (b_advantages + values) * mask


def gae(
    b_rewards: torch.Tensor, b_values: torch.Tensor, b_mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE without a Python loop over tokens: A_t = Σ_{s≥t} (gamma·lam)^{s-t} δ_s is δ times the
    upper-triangular discount matrix D[t, s] = (gamma·lam)^{s-t}, one [B, T] @ [T, T] product.
    Padding has δ = 0 (right-padded masks), so it adds nothing. Agrees with
    ``gae_reference`` (tests); costs O(T²) memory for D, small next to a [B, T, V] logit
    tensor. Shapes [B, T] (three) → (advantages [B, T], returns [B, T])."""
    _same_shape(b_rewards=b_rewards, b_values=b_values, b_mask=b_mask)
    _right_padded(b_mask)
    mask = b_mask.to(b_values.dtype)
    values = b_values * mask
    next_values = torch.nn.functional.pad(values[:, 1:], (0, 1))  # [B, T], V_T = 0
    b_deltas = (b_rewards * mask + gamma * next_values - values) * mask  # [B, T]
    n_tokens = b_rewards.shape[1]
    steps = torch.arange(n_tokens, device=values.device)
    lag = steps[None, :] - steps[:, None]  # [T, T]: lag[t, s] = s - t
    discount = torch.where(
        lag >= 0,
        torch.full(lag.shape, gamma * lam, dtype=values.dtype, device=values.device)
        ** lag.clamp(min=0),
        torch.zeros((), dtype=values.dtype, device=values.device),
    )  # [T, T]
    b_advantages = b_deltas @ discount.T  # [B, T]: Σ_s δ[b, s] · D[t, s]
    return b_advantages, (b_advantages + values) * mask


def rloo_advantages(b_rewards: torch.Tensor, b_mask: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024, eq. 4;
    TRL ``RLOOTrainer``): rows come in groups of ``k`` responses to one prompt, and each
    response's return R_i = Σ_t r_t (sequence score plus its per-token KL penalties) is
    compared with the mean return of the other k-1 responses to the same prompt,
    A_i = R_i - (Σ_j R_j - R_i)/(k-1). The baseline is unbiased (it does not depend on the
    response it judges) and removes the between-prompt spread of the score, which a critic
    would otherwise have to learn. Every token of a response gets its A_i; padding gets 0.
    Shapes [B, T] (two), B a multiple of k → [B, T]."""
    _same_shape(b_rewards=b_rewards, b_mask=b_mask)
    _right_padded(b_mask)
    if k < 2 or b_rewards.shape[0] % k:
        raise ValueError(f"rows ({b_rewards.shape[0]}) must come in groups of k >= 2 (k={k})")
    mask = b_mask.to(b_rewards.dtype)
    returns = (b_rewards * mask).sum(dim=1).view(-1, k)  # [B/k, k]
    baseline = (returns.sum(dim=1, keepdim=True) - returns) / (k - 1)  # [B/k, k]
    return (returns - baseline).view(-1, 1) * mask  # [B, T]


def scale_sequence_advantages(b_advantages: torch.Tensor, b_mask: torch.Tensor) -> torch.Tensor:
    """Whitening for sequence-level advantages (one value per response, on each of its
    tokens, as ``rloo_advantages`` gives): divided by their unbiased standard deviation over
    the B responses (ε = 1e-8 inside the rsqrt, as ``masked_whiten``), and not re-centred.
    The leave-one-out advantages of a prompt's k responses sum to zero, and a positive scale
    keeps that; ``masked_whiten`` over tokens would subtract the token-weighted mean, which
    is not zero when the responses differ in length, and so shift every advantage by
    an amount that rewards or penalises length. TRL's ``RLOOTrainer`` also normalises
    per response, not per token. Shapes [B, T] (two) → [B, T]; padding stays 0."""
    _same_shape(b_advantages=b_advantages, b_mask=b_mask)
    _right_padded(b_mask)
    b_seq = b_advantages[:, 0]  # [B]: every response has a first token
    var = masked_var(b_seq, torch.ones_like(b_seq))
    return b_advantages * torch.rsqrt(var + WHITEN_EPS) * b_mask.to(b_advantages.dtype)


# -- losses and diagnostics -------------------------------------------------------------------


def policy_loss(
    mb_new_logprobs: torch.Tensor,
    mb_old_logprobs: torch.Tensor,
    mb_advantages: torch.Tensor,
    mb_mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated to be minimised and
    averaged over response tokens: max(-A·r, -A·clip(r, 1-ε, 1+ε)), r = π_new/π_old
    (CleanRL ``pg_loss1``/``pg_loss2``; TRL ``pg_losses``/``pg_losses2``).

    clip_frac is the share of tokens where the clipped term is the larger one, i.e. where
    clipping changed the loss (lm-human-preferences / TRL ``pg_clipfrac``). approx_kl is the
    k3 estimate of KL(π_old ‖ π_new), mean((r - 1) - log r), as CleanRL: unbiased and never
    negative (Schulman 2020), where TRL's 0.5·mean((log r)²) is neither.
    Shapes [MB, T] (four) → (loss (), clip_frac (), approx_kl ()).
    """
    _same_shape(
        mb_new_logprobs=mb_new_logprobs,
        mb_old_logprobs=mb_old_logprobs,
        mb_advantages=mb_advantages,
        mb_mask=mb_mask,
    )
    mb_logratio = mb_new_logprobs - mb_old_logprobs  # [MB, T]
    mb_ratio = torch.exp(mb_logratio)
    pg_loss1 = -mb_advantages * mb_ratio
    pg_loss2 = -mb_advantages * torch.clamp(mb_ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(pg_loss1, pg_loss2), mb_mask)
    with torch.no_grad():
        clip_frac = masked_mean((pg_loss2 > pg_loss1).to(mb_ratio.dtype), mb_mask)
        approx_kl = masked_mean(kl_k3(mb_old_logprobs, mb_new_logprobs), mb_mask)
    return loss, clip_frac, approx_kl


def value_loss(
    mb_new_values: torch.Tensor,
    mb_old_values: torch.Tensor,
    mb_returns: torch.Tensor,
    mb_mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5·max((V - R)², (V_clip - R)²) with V_clip = V_old + clip(V - V_old,
    ±ε_v), averaged over response tokens (OpenAI baselines ppo2 ``model.py``, kept by
    lm-human-preferences; CleanRL ``v_loss_clipped``; TRL ``vf_loss``). clip_frac is the share
    of tokens where the clipped term is the larger (TRL ``vf_clipfrac``).
    Shapes [MB, T] (four) → (loss (), clip_frac ())."""
    _same_shape(
        mb_new_values=mb_new_values,
        mb_old_values=mb_old_values,
        mb_returns=mb_returns,
        mb_mask=mb_mask,
    )
    mb_clipped = mb_old_values + torch.clamp(
        mb_new_values - mb_old_values, -clip_range_value, clip_range_value
    )  # [MB, T]
    v_loss_unclipped = (mb_new_values - mb_returns) ** 2
    v_loss_clipped = (mb_clipped - mb_returns) ** 2
    loss = 0.5 * masked_mean(torch.max(v_loss_unclipped, v_loss_clipped), mb_mask)
    with torch.no_grad():
        clip_frac = masked_mean(
            (v_loss_clipped > v_loss_unclipped).to(mb_new_values.dtype), mb_mask
        )
    return loss, clip_frac


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token entropy H = logsumexp(z) - Σ softmax(z)·z over response tokens
    (TRL ``entropy_from_logits``). A diagnostic: no entropy bonus is used (TRL, N details).
    Shapes [B, T, V], [B, T] → ()."""
    if logits.dim() != 3 or mask.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [B, T, V] and mask [B, T], got {tuple(logits.shape)} and "
            f"{tuple(mask.shape)}"
        )
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)  # [B, T]
    return masked_mean(entropy, mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over response tokens (CleanRL ``explained_var``): 1 for a
    perfect critic, 0 for one that predicts the mean, negative for worse; NaN when the
    returns do not vary. Shapes [B, T] (three) → float."""
    _same_shape(values=values, returns=returns, mask=mask)
    var_returns = masked_var(returns, mask, unbiased=False)
    if var_returns == 0:
        return math.nan
    return float(1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns)


# -- KL coefficient controllers ---------------------------------------------------------------


class FixedKLController:
    """A constant β (TRL PPOv2's ``kl_coef``)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be non-negative, got {kl_coef}")
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt; kept so the trainer can call either controller."""


class AdaptiveKLController:
    """Ziegler et al. 2019 §2.2: e_t = clip(KL_t / KL_target - 1, -0.2, 0.2),
    β_{t+1} = β_t (1 + K_β e_t), with K_β = n_steps / horizon where n_steps is the number of
    episodes in the batch just used (lm-human-preferences ``AdaptiveKLController``)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if init_kl_coef <= 0:
            raise ValueError(f"init_kl_coef must be positive, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target must be positive, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -KL_ERROR_CLIP), KL_ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon
