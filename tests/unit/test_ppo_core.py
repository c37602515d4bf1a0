"""PPO maths: hand-computed values for each pure function, padding that changes nothing, and
the vectorised GAE checked against the plain reverse loop (as CleanRL's
tests/test_jax_compute_gae.py checks its scan against a loop)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from clinalign.trainer.methods.ppo import core

LN2, LN3 = math.log(2.0), math.log(3.0)
JUNK = 1e3  # written into padding positions: a result that depends on it is wrong


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.float64)


def close(actual: torch.Tensor | float, expected: list[list[float]] | list[float] | float) -> None:
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64), expected_t, rtol=0, atol=1e-7
    )


# -- log-probabilities --------------------------------------------------------------------


def test_logprobs_from_logits_hand_values() -> None:
    # softmax([0, ln 3]) = [1/4, 3/4]; softmax([ln 3, 0]) = [3/4, 1/4]
    logits = t([0.0, LN3], [LN3, 0.0]).unsqueeze(0)  # [1, 2, 2]
    tokens = torch.tensor([[1, 1]])
    close(core.logprobs_from_logits(logits, tokens), [[math.log(0.75), math.log(0.25)]])
    # temperature 2 halves the logits: softmax([0, ln √3]) gives √3 / (1 + √3) to token 1
    sqrt3 = math.sqrt(3.0)
    close(
        core.logprobs_from_logits(logits, tokens, temperature=2.0),
        [[math.log(sqrt3 / (1 + sqrt3)), math.log(1 / (1 + sqrt3))]],
    )


def test_logprobs_low_precision_path_matches_log_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    tokens = torch.randint(0, 11, (3, 5))
    expected = torch.log_softmax(logits.double(), -1).gather(-1, tokens[..., None])[..., 0]
    close(core.logprobs_from_logits(logits.double(), tokens), expected.tolist())
    fast = core.logprobs_from_logits(logits, tokens)
    torch.testing.assert_close(fast.double(), expected, rtol=0, atol=1e-5)
    low = core.logprobs_from_logits(logits.bfloat16(), tokens)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), expected, rtol=0, atol=0.1)


def test_logprobs_from_logits_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"logits must be \[B, T, V\] and tokens \[B, T\]"):
        core.logprobs_from_logits(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be positive"):
        core.logprobs_from_logits(torch.zeros(1, 1, 2), torch.zeros(1, 1), temperature=0.0)


# -- masked statistics --------------------------------------------------------------------


def test_masked_mean_and_var_hand_values() -> None:
    values = t([1.0, 2.0, JUNK], [4.0, JUNK, JUNK])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(core.masked_mean(values, mask), 7.0 / 3)  # (1 + 2 + 4) / 3
    close(core.masked_mean(values, mask, dim=1), [1.5, 4.0])
    # deviations from 7/3: -4/3, -1/3, 5/3; squares sum to 42/9 = 14/3
    close(core.masked_var(values, mask), 14.0 / 3 / 2)  # unbiased: / (n - 1)
    close(core.masked_var(values, mask, unbiased=False), 14.0 / 9)
    close(core.masked_var(values, mask.bool()), 14.0 / 6)  # a bool mask is the same mask


def test_masked_var_needs_entries() -> None:
    values = t([1.0, 2.0])
    with pytest.raises(ValueError, match="the mask selects no entries"):
        core.masked_var(values, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="at least two unmasked entries"):
        core.masked_var(values, torch.tensor([[1, 0]]))
    close(core.masked_var(values, torch.tensor([[1, 0]]), unbiased=False), 0.0)
    with pytest.raises(ValueError, match=r"shape mismatch: values \(1, 2\), mask \(2,\)"):
        core.masked_mean(values, torch.ones(2))


def test_masked_whiten_hand_values() -> None:
    values = t([1.0, 2.0, 3.0, JUNK])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, unbiased var 1: (x - 2) / sqrt(1 + 1e-8)
    scale = 1 / math.sqrt(1 + 1e-8)
    close(core.masked_whiten(values, mask)[:, :3], [[-scale, 0.0, scale]])
    close(core.masked_whiten(values, mask, shift_mean=False)[:, :3], [[2 - scale, 2.0, 2 + scale]])
    # biased var 2/3: (x - 2) · sqrt(3/2)
    s = math.sqrt(1.5)
    close(core.masked_whiten(values, mask, unbiased=False)[:, :3], [[-s, 0.0, s]])


def test_whiten_matches_the_n_details_published_numbers() -> None:
    # "The N Implementation Details of RLHF with PPO", TensorFlow vs PyTorch note: whitening
    # this matrix without shifting the mean, with torch's unbiased and tf's biased variance.
    rewards = t([1.2, 1.3, 1.4], [1.5, 1.6, 1.7], [1.8, 1.9, 2.0])
    mask = torch.ones(3, 3)
    unbiased = core.masked_whiten(rewards, mask, shift_mean=False)
    biased = core.masked_whiten(rewards, mask, shift_mean=False, unbiased=False)
    expected_unbiased = [[0.1394, 0.5046, 0.8697], [1.2349, 1.6, 1.9651], [2.3303, 2.6954, 3.0606]]
    expected_biased = [[0.0508, 0.4381, 0.8254], [1.2127, 1.6, 1.9873], [2.3746, 2.7619, 3.1492]]
    torch.testing.assert_close(unbiased, t(*expected_unbiased), rtol=0, atol=1e-4)
    torch.testing.assert_close(biased, t(*expected_biased), rtol=0, atol=1e-4)


# -- KL estimators, rewards, unfinished responses -----------------------------------------


def test_kl_estimators_hand_values() -> None:
    logp, ref = (
        t([math.log(0.5), math.log(0.25), math.log(0.3)]),
        t([math.log(0.25), math.log(0.5), math.log(0.3)]),
    )
    # k1 = log(π/π_ref): ln 2, -ln 2 (negative for one sample), 0
    close(core.kl_k1(logp, ref), [[LN2, -LN2, 0.0]])
    # k3 = r - ln r - 1 with r = π_ref/π:
    #   r = 1/2 gives ln 2 - 1/2, r = 2 gives 1 - ln 2, r = 1 gives 0
    close(core.kl_k3(logp, ref), [[LN2 - 0.5, 1 - LN2, 0.0]])
    assert (core.kl_k3(torch.randn(50), torch.randn(50)) >= 0).all()


def test_token_rewards_hand_values() -> None:
    scores = torch.tensor([1.0, 2.0], dtype=torch.float64)
    logprobs = t([-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0])
    ref_logprobs = t([-1.5, -2.0, -2.0], [-2.0, -1.0, -7.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, non_score, kl = core.token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # k1 = logp - ref: [0.5, 0, -1] and [1, 0, (padding → 0)]
    close(kl, [[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]])
    close(non_score, [[-0.05, 0.0, 0.1], [-0.1, 0.0, 0.0]])
    # the score lands on the last response token: index 2 for row 0, index 1 for row 1
    close(rewards, [[-0.05, 0.0, 1.1], [-0.1, 2.0, 0.0]])


def test_token_rewards_with_k3() -> None:
    scores = torch.tensor([1.0], dtype=torch.float64)
    logprobs, ref_logprobs = t([-1.0, -2.0, -3.0]), t([-1.5, -2.0, -2.0])
    _, _, kl = core.token_rewards(
        scores, logprobs, ref_logprobs, torch.ones(1, 3), kl_coef=0.1, kl_estimator="k3"
    )
    # ln r = ref - logp = -0.5, 0, 1: e^-0.5 + 0.5 - 1, 0, e - 1 - 1
    close(kl, [[math.exp(-0.5) - 0.5, 0.0, math.e - 2]])


def test_token_rewards_rejects_bad_input() -> None:
    zeros = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"b_scores must be \[B\] with B=2"):
        core.token_rewards(torch.zeros(3), zeros, zeros, torch.ones(2, 3), 0.1)
    with pytest.raises(ValueError, match="mask must be right-padded"):
        core.token_rewards(torch.zeros(2), zeros, zeros, torch.tensor([[1, 0, 1], [1, 1, 1]]), 0.1)
    with pytest.raises(ValueError, match="at least one unmasked token"):
        core.token_rewards(torch.zeros(2), zeros, zeros, torch.tensor([[0, 0, 0], [1, 1, 1]]), 0.1)
    with pytest.raises(ValueError, match="kl_estimator must be 'k1' or 'k3', got 'k2'"):
        core.token_rewards(torch.zeros(2), zeros, zeros, torch.ones(2, 3), 0.1, "k2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"b_logprobs \(2, 3\), b_ref_logprobs \(2, 2\)"):
        core.token_rewards(torch.zeros(2), zeros, torch.zeros(2, 2), torch.ones(2, 3), 0.1)


def test_finished_responses_ended_and_not_blank() -> None:
    ended = torch.tensor([True, False, True, False])
    blank = torch.tensor([False, False, True, True])
    assert core.finished_responses(ended, blank).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="shape mismatch"):
        core.finished_responses(ended, blank[:3])


def test_penalise_unfinished_scores_only_the_finished() -> None:
    f_scores = torch.tensor([0.5, -0.3])  # the scorer's answers for rows 0 and 2, in order
    finished = torch.tensor([True, False, True, False])
    b_scores = core.penalise_unfinished(f_scores, finished, penalty=-1.0)
    close(b_scores, [0.5, -1.0, -0.3, -1.0])
    assert b_scores.dtype == torch.float32
    nothing = core.penalise_unfinished(torch.zeros(0), torch.zeros(3, dtype=torch.bool), -2.5)
    close(nothing, [-2.5, -2.5, -2.5])
    with pytest.raises(ValueError, match=r"f_scores must be \[F\] with F=2 finished responses"):
        core.penalise_unfinished(torch.zeros(3), finished, penalty=-1.0)
    with pytest.raises(ValueError, match=r"b_finished must be a \[B\] bool tensor"):
        core.penalise_unfinished(f_scores, finished.long(), penalty=-1.0)


def test_penalise_unfinished_agrees_with_scoring_all_then_replacing() -> None:
    """lm-human-preferences scores every response and then replaces the unfinished ones'
    scores (``torch.where`` in N details' "Rejection sampling"); scoring only the finished
    ones gives the same scores."""
    torch.manual_seed(0)
    b_all = torch.randn(16)  # what a reward model would say of every response
    finished = torch.rand(16) > 0.4
    replaced = torch.where(finished, b_all, torch.full_like(b_all, -1.0))
    close(core.penalise_unfinished(b_all[finished], finished, penalty=-1.0), replaced.tolist())


# -- GAE ------------------------------------------------------------------------------------

Gae = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, float, float], tuple[torch.Tensor, torch.Tensor]
]
GAE_IMPLEMENTATIONS: list[Gae] = [core.gae_reference, core.gae]


@pytest.mark.parametrize("gae", GAE_IMPLEMENTATIONS)
def test_gae_hand_values_gamma_1_lambda_095(gae: Gae) -> None:
    rewards = t([0.0, 0.0, 1.0], [0.0, 1.0, JUNK])
    values = t([0.5, 0.6, 0.7], [0.5, 0.6, JUNK])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, 1.0, 0.95)
    # row 0: δ2 = 1 - 0.7 = 0.3 (terminal, V3 = 0); δ1 = 0.7 - 0.6 = 0.1; δ0 = 0.6 - 0.5 = 0.1
    #        A2 = 0.3; A1 = 0.1 + 0.95·0.3 = 0.385; A0 = 0.1 + 0.95·0.385 = 0.46575
    # row 1: the response ends at t = 1, so V2 counts as 0 and the padding adds nothing:
    #        δ1 = 1 - 0.6 = 0.4; δ0 = 0.6 - 0.5 = 0.1; A1 = 0.4; A0 = 0.1 + 0.95·0.4 = 0.48
    close(advantages, [[0.46575, 0.385, 0.3], [0.48, 0.4, 0.0]])
    close(returns, [[0.96575, 0.985, 1.0], [0.98, 1.0, 0.0]])  # A + V, 0 on padding


@pytest.mark.parametrize("gae", GAE_IMPLEMENTATIONS)
def test_gae_hand_values_with_discount(gae: Gae) -> None:
    rewards, values = t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7])
    advantages, _ = gae(rewards, values, torch.ones(1, 3), 0.9, 0.5)
    # δ2 = 1 - 0.7 = 0.3; δ1 = 0.9·0.7 - 0.6 = 0.03; δ0 = 0.9·0.6 - 0.5 = 0.04; γλ = 0.45
    # A2 = 0.3; A1 = 0.03 + 0.45·0.3 = 0.165; A0 = 0.04 + 0.45·0.165 = 0.11425
    close(advantages, [[0.11425, 0.165, 0.3]])
    # λ = 0 gives the one-step TD error δ_t
    advantages, _ = gae(rewards, values, torch.ones(1, 3), 0.9, 0.0)
    close(advantages, [[0.04, 0.03, 0.3]])


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (1.0, 0.95), (0.99, 0.95), (0.5, 0.0)])
def test_vectorised_gae_agrees_with_the_loop(gamma: float, lam: float) -> None:
    generator = torch.Generator().manual_seed(1234)
    batch, n_tokens = 16, 64
    rewards = torch.randn(batch, n_tokens, generator=generator, dtype=torch.float64)
    values = torch.randn(batch, n_tokens, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, n_tokens + 1, (batch,), generator=generator)
    lengths[0], lengths[1] = 1, n_tokens  # both extremes
    mask = torch.arange(n_tokens)[None, :] < lengths[:, None]
    loop_adv, loop_ret = core.gae_reference(rewards, values, mask, gamma, lam)
    fast_adv, fast_ret = core.gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(fast_adv, loop_adv, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_ret, loop_ret, rtol=1e-10, atol=1e-10)
    # padding is ignored: junk there changes nothing, and advantages there are zero
    junk = torch.full_like(rewards, JUNK)
    junk_adv, junk_ret = core.gae(
        torch.where(mask, rewards, junk), torch.where(mask, values, junk), mask, gamma, lam
    )
    torch.testing.assert_close(junk_adv, fast_adv, rtol=0, atol=1e-10)
    torch.testing.assert_close(junk_ret, fast_ret, rtol=0, atol=1e-10)
    assert (fast_adv[~mask] == 0).all() and (fast_ret[~mask] == 0).all()


def test_rloo_advantages_hand_values() -> None:
    # two prompts, two responses each; returns are the masked row sums of the rewards
    rewards = t(
        [-0.1, 2.0, JUNK],  # R = 1.9
        [-0.1, -0.1, 1.2],  # R = 1.0
        [0.0, 3.0, JUNK],  # R = 3.0
        [-0.5, 1.5, JUNK],  # R = 1.0
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]])
    advantages = core.rloo_advantages(rewards, mask, k=2)
    # k = 2: each response against the other one; the same A on every token, 0 on padding
    close(advantages, [[0.9, 0.9, 0.0], [-0.9, -0.9, -0.9], [2.0, 2.0, 0.0], [-2.0, -2.0, 0.0]])
    # k = 4: A_i = R_i - mean of the other three, e.g. 1.9 - (1.0 + 3.0 + 1.0) / 3
    advantages = core.rloo_advantages(rewards, mask, k=4)
    expected = [r - (6.9 - r) / 3 for r in (1.9, 1.0, 3.0, 1.0)]
    close(advantages[:, 0], expected)
    close(advantages.sum(), 2 * sum(expected) + expected[1])  # padding adds nothing
    assert abs(sum(expected)) < 1e-12  # leave-one-out advantages of a group sum to zero


def test_rloo_advantages_reject_bad_groups() -> None:
    x, mask = torch.zeros(3, 2), torch.ones(3, 2)
    for k in (1, 2):  # a group of one has no baseline; 3 rows do not split into pairs
        with pytest.raises(ValueError, match="groups of k"):
            core.rloo_advantages(x, mask, k)
    with pytest.raises(ValueError, match="mask must be right-padded"):
        core.rloo_advantages(torch.zeros(2, 3), torch.tensor([[1, 0, 1], [1, 1, 1]]), 2)


def test_scale_sequence_advantages_hand_values_keep_the_zero_sum() -> None:
    # sequence advantages 3, -3 (one prompt) and 1, -1 (another), on rows of unequal length
    advantages = t([3.0, 3.0, 3.0], [-3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 0.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    # unbiased variance over the 4 responses: (9 + 9 + 1 + 1) / 3 = 20/3
    scale = 1.0 / math.sqrt(20.0 / 3.0 + core.WHITEN_EPS)
    scaled = core.scale_sequence_advantages(advantages, mask)
    close(scaled, (advantages * scale).tolist())
    per_prompt = scaled[:, 0].view(2, 2).sum(dim=1)  # one value a response, summed by prompt
    close(per_prompt, [0.0, 0.0])
    # token-weighted whitening shifts every response by the token-weighted mean (3·3 - 3 +
    # 2·1 - 1) / 7 = 1: the leave-one-out sums would no longer be zero
    whitened = core.masked_whiten(advantages, mask) * mask
    assert abs(float(whitened[:, 0].view(2, 2).sum(dim=1)[0])) > 0.1


def test_gae_rejects_a_mask_with_holes() -> None:
    x = torch.zeros(1, 3)
    for gae in GAE_IMPLEMENTATIONS:
        with pytest.raises(ValueError, match="mask must be right-padded"):
            gae(x, x, torch.tensor([[1, 0, 1]]), 1.0, 0.95)


# -- losses ---------------------------------------------------------------------------------


def test_policy_loss_inside_and_outside_the_clip_range() -> None:
    ratios = [1.1, 1.5, 0.5, 1.5, 10.0]  # the last is padding
    old = t([-1.0] * 5)
    new = (old + torch.log(t(ratios))).requires_grad_()
    advantages = t([2.0, 1.0, -1.0, -1.0, 100.0])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clip_frac, approx_kl = core.policy_loss(new, old, advantages, mask, clip_range=0.2)
    # per token max(-A·r, -A·clip(r, 0.8, 1.2)):
    #   r 1.1, A  2: inside the range      max(-2.2, -2.2) = -2.2
    #   r 1.5, A  1: clipped               max(-1.5, -1.2) = -1.2
    #   r 0.5, A -1: clipped               max( 0.5,  0.8) =  0.8
    #   r 1.5, A -1: outside, not clipped  max( 1.5,  1.2) =  1.5 (the pessimistic bound)
    close(loss.detach(), (-2.2 - 1.2 + 0.8 + 1.5) / 4)
    close(clip_frac, 0.5)
    # approx KL = mean(r - 1 - ln r) over the four response tokens
    expected_kl = sum(r - 1 - math.log(r) for r in ratios[:4]) / 4
    close(approx_kl, expected_kl)
    # d loss / d new_logprob = -A·r/4 where unclipped and 0 where clipped or padding
    loss.backward()
    assert new.grad is not None
    close(new.grad, [[-2 * 1.1 / 4, 0.0, 0.0, 1.5 / 4, 0.0]])


def test_policy_loss_at_the_old_policy_is_minus_the_mean_advantage() -> None:
    old = t([-1.0, -2.0, JUNK])
    mask = torch.tensor([[1, 1, 0]])
    loss, clip_frac, approx_kl = core.policy_loss(old, old, t([1.0, 3.0, JUNK]), mask, 0.2)
    close(loss, -2.0)
    close(clip_frac, 0.0)
    close(approx_kl, 0.0)
    with pytest.raises(ValueError, match=r"mb_advantages \(1, 2\)"):
        core.policy_loss(old, old, t([1.0, 3.0]), mask, 0.2)


def test_value_loss_inside_and_outside_the_clip_range() -> None:
    old = t([1.0, 1.0, 1.0, 1.0])
    new = t([1.1, 1.5, 1.5, 100.0])  # the last is padding
    returns = t([2.0, 2.0, 0.0, -100.0])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_frac = core.value_loss(new, old, returns, mask, clip_range_value=0.2)
    # V_clip = 1 + clip(V - 1, ±0.2) = 1.1, 1.2, 1.2
    #   (1.1 - 2)² = 0.81, same clipped      → 0.81, not clipped
    #   (1.5 - 2)² = 0.25 < (1.2 - 2)² = 0.64 → 0.64, clipped
    #   (1.5 - 0)² = 2.25 > (1.2 - 0)² = 1.44 → 2.25, not clipped
    close(loss, 0.5 * (0.81 + 0.64 + 2.25) / 3)
    close(clip_frac, 1.0 / 3)


def test_entropy_from_logits_hand_values() -> None:
    logits = t([0.0, 0.0], [0.0, LN3], [10.0, -10.0]).unsqueeze(0)  # [1, 3, 2]
    mask = torch.tensor([[1, 1, 0]])
    # H(1/2, 1/2) = ln 2; H(1/4, 3/4) = ¼ ln 4 + ¾ ln(4/3); the padding token is ignored
    h_quarter = 0.25 * math.log(4) + 0.75 * math.log(4 / 3)
    close(core.entropy_from_logits(logits, mask), (LN2 + h_quarter) / 2)
    with pytest.raises(ValueError, match=r"logits must be \[B, T, V\] and mask \[B, T\]"):
        core.entropy_from_logits(logits, torch.ones(1, 2))


def test_explained_variance_hand_values() -> None:
    returns = t([1.0, 2.0, 3.0, JUNK])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert core.explained_variance(t([1.0, 2.0, 3.0, 0.0]), returns, mask) == pytest.approx(1.0)
    assert core.explained_variance(t([2.0, 2.0, 2.0, 0.0]), returns, mask) == pytest.approx(0.0)
    # R - V = [-2, 0, 2]: Var 8/3 against Var(R) = 2/3, so 1 - 4 = -3
    assert core.explained_variance(t([3.0, 2.0, 1.0, 0.0]), returns, mask) == pytest.approx(-3.0)
    assert math.isnan(core.explained_variance(t([0.0] * 4), t([5.0] * 4), mask))


# -- KL controllers ---------------------------------------------------------------------------


def test_adaptive_kl_controller_hand_values() -> None:
    controller = core.AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    # KL 9: error 9/6 - 1 = 0.5, clipped to 0.2; β = 0.2 · (1 + 0.2 · 256/10000) = 0.201024
    controller.update(current_kl=9.0, n_steps=256)
    assert controller.value == pytest.approx(0.201024, abs=1e-12)
    # KL 5.4: error -0.1 inside the clip; β ·= 1 - 0.1 · 1000/10000 = 0.99
    controller.update(current_kl=5.4, n_steps=1000)
    assert controller.value == pytest.approx(0.201024 * 0.99, abs=1e-12)
    # at the target nothing changes; KL 0 clips to -0.2: β ·= 1 - 0.2 · 500/10000 = 0.99
    before = controller.value
    controller.update(current_kl=6.0, n_steps=512)
    assert controller.value == pytest.approx(before, abs=1e-12)
    controller.update(current_kl=0.0, n_steps=500)
    assert controller.value == pytest.approx(before * 0.99, abs=1e-12)


def test_fixed_kl_controller_and_bad_arguments() -> None:
    fixed = core.FixedKLController(0.05)
    fixed.update(current_kl=100.0, n_steps=64)
    assert fixed.value == 0.05
    with pytest.raises(ValueError, match="kl_coef must be non-negative"):
        core.FixedKLController(-0.1)
    with pytest.raises(ValueError, match="init_kl_coef must be positive"):
        core.AdaptiveKLController(0.0, 6.0, 10_000)
    with pytest.raises(ValueError, match="target must be positive"):
        core.AdaptiveKLController(0.2, 0.0, 10_000)
    with pytest.raises(ValueError, match="horizon must be positive"):
        core.AdaptiveKLController(0.2, 6.0, 0)
