"""The PPO loop's phases (``clinalign.trainer.methods.ppo``: rollout, scoring, optimise,
figures, checkpoint, models) called one at a time on hand-made tensors, with hand-computed
values. The phases on the tiny model are in ``test_ppo_phases_tiny_model``; the whole loop
in ``tests/integration/test_ppo_training.py``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from clinalign.trainer.methods.ppo import core
from clinalign.trainer.methods.ppo.checkpoint import LoopState, checkpoint_due, last_checkpoint
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.figures import iteration_figures, record_iteration
from clinalign.trainer.methods.ppo.models import anneal_learning_rate, kl_controller, positions
from clinalign.trainer.methods.ppo.optimise import Batch, micro_batch_rows, ppo_loss
from clinalign.trainer.methods.ppo.rollout import (
    Rollout,
    first_eos_mask,
    local_prompts,
    next_prompts,
    trim,
)
from clinalign.trainer.methods.ppo.scoring import (
    Advantages,
    Evaluation,
    compute_advantages,
    sequence_scores,
)

JUNK = 1e3  # written into padding positions: a result that depends on it is wrong
LN2 = math.log(2.0)


def close(actual: torch.Tensor | float, expected: object) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        rtol=0,
        atol=1e-6,
    )


# -- rollout -----------------------------------------------------------------------------------


def test_first_eos_mask_keeps_the_eos_and_marks_rows_that_never_end() -> None:
    responses = torch.tensor([[5, 2, 7], [5, 6, 7], [2, 2, 9]])
    mask, ended = first_eos_mask(responses, eos_id=2)
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_trim_drops_all_padding_columns_and_positions_skip_left_padding() -> None:
    queries = torch.tensor([[0, 0, 3], [0, 4, 5]])
    q_mask = torch.tensor([[0, 0, 1], [0, 1, 1]])
    responses = torch.tensor([[7, 2, 0], [8, 0, 0]])
    r_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    ids, mask, width = trim(queries, q_mask, responses, r_mask)
    assert width == 2  # the longest response; query column 0 is padding in every row
    assert ids.tolist() == [[0, 3, 7, 2], [4, 5, 8, 0]]
    assert mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 0]]
    assert positions(mask).tolist() == [[0, 0, 1, 2], [0, 1, 2, 2]]


def test_next_prompts_walks_a_reshuffled_order_across_epochs() -> None:
    state = LoopState()
    order0 = torch.randperm(5, generator=torch.Generator().manual_seed(7)).tolist()
    order1 = torch.randperm(5, generator=torch.Generator().manual_seed(8)).tolist()
    assert next_prompts(state, 5, 3, seed=7) == order0[:3]
    assert next_prompts(state, 5, 3, seed=7) == order0[3:] + order1[:1]
    assert (state.data_epoch, state.data_index) == (1, 1)


def test_local_prompts_keep_a_prompts_samples_adjacent_in_one_process() -> None:
    hyper = PPOHyperparameters(rollout_batch_size=8, samples_per_prompt=4)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(hyper.seed)).tolist()
    first, second = order[:2]  # 8 / 4 = 2 prompts a batch
    assert local_prompts(LoopState(), 10, hyper, world=2, rank=0) == [first] * 4
    assert local_prompts(LoopState(), 10, hyper, world=2, rank=1) == [second] * 4
    assert local_prompts(LoopState(), 10, hyper, world=1, rank=0) == [first] * 4 + [second] * 4


# -- scoring -----------------------------------------------------------------------------------


def test_sequence_scores_ask_only_about_finished_answers() -> None:
    calls: list[tuple[list[str], list[str]]] = []

    def score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        calls.append((list(prompts), list(responses)))
        return [0.25 * len(r.split()) for r in responses]

    texts = ["a b", "", "never ends", "  ", "c"]
    ended = torch.tensor([True, True, False, True, True])
    prompts = [f"p{i}" for i in range(5)]
    b_scores, finished = sequence_scores(score, prompts, texts, ended, penalty=-1.0)
    assert calls == [(["p0", "p4"], ["a b", "c"])]  # blank (1, 3) and endless (2) never asked
    close(b_scores, [0.5, -1.0, -1.0, -1.0, 0.25])
    assert finished.tolist() == [True, False, False, False, True]
    calls.clear()
    b_scores, _ = sequence_scores(score, prompts[:2], ["x", "y"], ended[2:4] & False, -2.0)
    assert calls == [] and b_scores.tolist() == [-2.0, -2.0]
    with pytest.raises(RuntimeError, match="the scorer returned 2 scores for 1"):
        sequence_scores(lambda p, r: [0.0, 0.0], ["p"], ["x"], torch.tensor([True]), -1.0)


def _evaluation(values: list[list[float]]) -> Evaluation:
    logprobs = torch.tensor([[-1.0, -1.0], [-2.0, JUNK]])
    ref_logprobs = torch.tensor([[-1.5, -1.0], [-2.0, JUNK]])
    return Evaluation(logprobs, ref_logprobs, torch.tensor(values), entropy=0.7)


MASK = torch.tensor([[1, 1], [1, 0]])
SCORES = torch.tensor([1.0, -1.0])


def test_compute_advantages_gae_hand_values() -> None:
    # k1 KL = [[0.5, 0], [0, 0]]; β = 0.2 → non-score [[-0.1, 0], [0, 0]]; the score lands on
    # each row's last token: rewards [[-0.1, 1.0], [-1.0, 0]].
    hyper = PPOHyperparameters(gamma=1.0, lam=0.5, whiten_advantages=False)
    adv = compute_advantages(SCORES, _evaluation([[0.5, 0.25], [0.3, JUNK]]), MASK, 0.2, hyper)
    close(adv.kl, [[0.5, 0.0], [0.0, 0.0]])
    close(adv.non_score, [[-0.1, 0.0], [0.0, 0.0]])
    close(adv.rewards, [[-0.1, 1.0], [-1.0, 0.0]])
    # row 0: δ1 = 1 - 0.25 = 0.75 = A1; δ0 = -0.1 + 0.25 - 0.5 = -0.35, A0 = -0.35 + 0.5·0.75
    # row 1: A0 = δ0 = -1 - 0.3 = -1.3
    close(adv.advantages, [[0.025, 0.75], [-1.3, 0.0]])
    close(adv.returns, [[0.525, 1.0], [-1.0, 0.0]])
    whitened = compute_advantages(
        SCORES, _evaluation([[0.5, 0.25], [0.3, JUNK]]), MASK, 0.2, PPOHyperparameters(lam=0.5)
    )
    close(core.masked_mean(whitened.advantages, MASK), 0.0)
    assert whitened.advantages[1, 1] == 0.0


def test_compute_advantages_rloo_hand_values() -> None:
    # one group of k = 2: returns R = 0.9 and -1.0; each against the other
    hyper = PPOHyperparameters(
        advantage_estimator="rloo", samples_per_prompt=2, whiten_advantages=False
    )
    evaluation = _evaluation([[0.0, 0.0], [0.0, 0.0]])
    adv = compute_advantages(SCORES, evaluation, MASK, 0.2, hyper)
    close(adv.advantages, [[1.9, 1.9], [-1.9, 0.0]])
    assert adv.returns is evaluation.values  # no critic: nothing to fit


def test_whitened_rloo_advantages_sum_to_zero_for_each_prompt() -> None:
    # 3 prompts, k = 4 responses each, of lengths 1..6, random scores and KL: whitening scales
    # the leave-one-out advantages and must not shift them (issue 20)
    k, n_prompts, width = 4, 3, 6
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, width + 1, (k * n_prompts,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # [B, T]
    logprobs = -torch.rand(k * n_prompts, width, generator=gen)
    evaluation = Evaluation(logprobs, logprobs - 0.1, torch.zeros_like(logprobs), entropy=1.0)
    scores = torch.randn(k * n_prompts, generator=gen)
    hyper = PPOHyperparameters(advantage_estimator="rloo", samples_per_prompt=k)
    adv = compute_advantages(scores, evaluation, mask, 0.2, hyper).advantages
    b_seq = adv[:, 0]  # [B]: each response's advantage, the same on its every token
    assert torch.equal(adv, b_seq[:, None] * mask)
    close(b_seq.view(n_prompts, k).sum(dim=1), [0.0] * n_prompts)
    close(b_seq.std(), 1.0)  # scaled to unit (unbiased) std over the responses
    plain = compute_advantages(
        scores, evaluation, mask, 0.2, dataclasses.replace(hyper, whiten_advantages=False)
    ).advantages
    ratio = adv[mask.bool()] / plain[mask.bool()]  # one positive scale for every token
    assert float(ratio[0]) > 0
    close(ratio, ratio[0].expand_as(ratio))


# -- optimise ----------------------------------------------------------------------------------


def _micro_batch(old_logprobs: list[list[float]]) -> Batch:
    return Batch(
        queries=torch.zeros(1, 1, dtype=torch.long),
        query_mask=torch.ones(1, 1, dtype=torch.long),
        responses=torch.tensor([[0, 1]]),
        response_mask=torch.tensor([[1, 1]]),
        logprobs=torch.tensor(old_logprobs),
        values=torch.tensor([[0.0, 0.0]]),
        advantages=torch.tensor([[2.0, -1.0]]),
        returns=torch.tensor([[1.0, 0.0]]),
    )


def test_ppo_loss_hand_values() -> None:
    # uniform logits over 2 tokens: log π_new = -ln 2 for both; π_old 1/4 then 1/2, so the
    # ratios are 2 (clipped to 1.2, A = 2 > 0) and 1
    mb = _micro_batch([[-2 * LN2, -LN2]])
    logits, new_values = torch.zeros(1, 2, 2), torch.tensor([[0.5, 0.1]])
    loss, figures = ppo_loss(logits, new_values, mb, PPOHyperparameters(), has_values=True)
    close(figures["policy_loss"], (-2.4 + 1.0) / 2)  # max(-4, -2.4) and max(1, 1)
    close(figures["clip_frac"], 0.5)
    close(figures["approx_kl"], (1 - LN2) / 2)  # k3 at r = 2: (r - 1) - ln r
    # V 0.5 → clipped 0.2 against R 1: max(0.25, 0.64); V 0.1 against R 0: 0.01 both
    close(figures["value_loss"], 0.5 * (0.64 + 0.01) / 2)
    close(figures["value_clip_frac"], 0.5)
    close(loss, -0.7 + 0.1 * 0.1625)
    loss, figures = ppo_loss(logits, new_values, mb, PPOHyperparameters(), has_values=False)
    close(loss, -0.7)  # rloo: no value term
    close(figures["value_loss"], 0.0)


def test_batch_rows_and_columns() -> None:
    batch = Batch(*(torch.arange(6).view(2, 3) + 10 * i for i in range(8)))
    mb = batch.rows(torch.tensor([1])).first_columns(2)
    assert mb.queries.tolist() == [[3, 4, 5]]  # queries keep every column
    assert mb.responses.tolist() == [[23, 24]]
    assert mb.returns.tolist() == [[73, 74]]


def test_micro_batch_rows_and_the_learning_rate_schedule() -> None:
    hyper = PPOHyperparameters(
        iterations=4, rollout_batch_size=16, minibatches=2, gradient_accumulation_steps=2
    )
    assert micro_batch_rows(hyper, world=2) == 2  # 16 / 2 processes / 2 / 2
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [weight], "lr": 1.0, "base_lr": 0.5}])
    anneal_learning_rate(optimizer, 1, hyper)
    assert optimizer.param_groups[0]["lr"] == 0.375  # (1 - 1/4) · 0.5
    anneal_learning_rate(optimizer, 1, PPOHyperparameters(iterations=4, anneal_lr=False))
    assert optimizer.param_groups[0]["lr"] == 0.5


# -- figures and checkpoints -------------------------------------------------------------------


def test_iteration_figures_hand_values() -> None:
    rollout = Rollout(
        queries=torch.zeros(2, 1, dtype=torch.long),
        query_mask=torch.ones(2, 1, dtype=torch.long),
        responses=torch.zeros(2, 2, dtype=torch.long),
        response_mask=MASK,
        ended=torch.tensor([True, False]),
    )
    returns = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    evaluation = Evaluation(torch.zeros(2, 2), torch.zeros(2, 2), returns.clone(), entropy=0.7)
    zeros = torch.zeros(2, 2)
    advantages = Advantages(
        zeros,
        torch.tensor([[-0.1, 0.0], [0.0, 0.0]]),
        torch.tensor([[0.5, 0.0], [0.0, 0.0]]),
        zeros,
        returns,
    )
    finished = torch.tensor([True, False])
    figures = iteration_figures(
        SCORES, finished, rollout, evaluation, advantages, {"policy_loss": 0.5}, has_values=True
    )
    assert figures == pytest.approx(
        {
            "score": 0.0,
            "rm_score": 1.0,  # the finished response's only
            "non_score_reward": -0.05,
            "reward": -0.05,  # (1 - 0.1 - 1) / 2
            "kl": 0.25,
            "entropy_rollout": 0.7,
            "response_length": 1.5,
            "ended_frac": 0.5,
            "explained_variance": 1.0,  # values = returns
            "policy_loss": 0.5,
        }
    )
    figures = iteration_figures(
        SCORES, ~finished & False, rollout, evaluation, advantages, {}, has_values=False
    )
    assert math.isnan(figures["rm_score"]) and math.isnan(figures["explained_variance"])


def test_record_iteration_adapts_beta_after_logging_it() -> None:
    hyper = PPOHyperparameters(rollout_batch_size=8)
    state, kl_ctl = LoopState(kl_coef=0.15), kl_controller(hyper, 0.15)
    figures = record_iteration(state, kl_ctl, {"kl": 12.0}, hyper, 1e-3, 2.5)
    beta = 0.15 * (1 + 0.2 * 8 / 10_000)  # KL/target - 1 = 1, clipped to 0.2
    assert figures == {
        "kl": 12.0,
        "kl_coef": 0.15,  # the β this iteration's rewards used
        "learning_rate": 1e-3,
        "episodes": 8.0,
        "iteration_s": 2.5,
    }
    assert state.kl_coef == pytest.approx(beta) and kl_ctl.value == state.kl_coef
    assert state.iteration == 1 and state.history == [[1, figures]]
    fixed = kl_controller(PPOHyperparameters(kl_controller="fixed"), 0.05)
    record_iteration(LoopState(), fixed, {"kl": 12.0}, hyper, 1e-3, 1.0)
    assert fixed.value == 0.05


def test_checkpoints_due_and_the_latest_complete_one(tmp_path: Path) -> None:
    every_3 = PPOHyperparameters(checkpoint_every=3)
    assert [checkpoint_due(every_3, i) for i in (1, 3, 4, 6)] == [False, True, False, True]
    assert not checkpoint_due(PPOHyperparameters(checkpoint_every=0), 3)
    assert last_checkpoint(tmp_path) is None
    for name in ("checkpoint-3", "checkpoint-10", ".writing-checkpoint-12", "checkpoint-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-20").touch()  # a file, not a checkpoint
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    state = LoopState(iteration=2, kl_coef=0.1, history=[[1, {"kl": 1.0}]])
    restored = LoopState()
    restored.load_state_dict(state.state_dict())
    assert restored == state
