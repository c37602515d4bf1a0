"""The PPO loop's model phases on the tiny fixture model, one call each as ``train_ppo``
makes them: build the models, roll out, evaluate the rollout, and optimise, which must
change the parameters and lower the loss on its batch (TRL's tests/test_reward_trainer.py
asks the same of a training step)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from clinalign.common.prompts import render_user_prompt
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.models import (
    PolicyAndCritic,
    build_models,
    build_optimizer,
    load_tokenizer,
    positions,
    reference_fn,
)
from clinalign.trainer.methods.ppo.optimise import Batch, optimise, ppo_loss
from clinalign.trainer.methods.ppo.rollout import Rollout, first_eos_mask, generate_responses, trim
from clinalign.trainer.methods.ppo.scoring import (
    Evaluation,
    compute_advantages,
    evaluate_rollout,
    sequence_scores,
)

PROMPTS = [f"I have had a dry cough for {n} days. What should I do?" for n in range(2, 6)]
HYPER = PPOHyperparameters(
    rollout_batch_size=4,
    minibatches=2,
    ppo_epochs=4,
    response_length=8,
    learning_rate=1e-2,
    critic="value_head",
    seed=3,
)


@pytest.fixture
def accelerator() -> Iterator[Accelerator]:
    AcceleratorState._reset_state(reset_partial_state=False)  # as train_ppo does
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=False)


def _phases(
    tiny_model_dir: Path, accelerator: Accelerator
) -> tuple[Any, PolicyAndCritic, Any, Rollout, Evaluation]:
    """(tokenizer, model, reference, rollout, evaluation) after the first two phases."""
    torch.manual_seed(HYPER.seed)
    tokenizer = load_tokenizer(tiny_model_dir)
    model, reference = build_models(tiny_model_dir, tokenizer, HYPER, accelerator.device)
    model.eval()
    texts = [render_user_prompt(tokenizer, p) for p in PROMPTS]
    rollout = generate_responses(model.policy, tokenizer, texts, HYPER, accelerator)
    ref = reference_fn(reference, model.policy, HYPER.temperature)
    trimmed, evaluation = evaluate_rollout(model, ref, rollout, 2, HYPER.temperature, accelerator)
    assert trimmed.responses.shape[1] == int(rollout.response_mask.sum(dim=1).max())
    return tokenizer, model, reference, trimmed, evaluation


def test_models_rollout_and_evaluation(tiny_model_dir: Path, accelerator: Accelerator) -> None:
    tokenizer, model, reference, rollout, evaluation = _phases(tiny_model_dir, accelerator)
    # models: a zero value head, a frozen reference, no dropout anywhere
    assert model.has_values and model.critic is None
    assert torch.count_nonzero(model.value_head.weight) == 0
    assert reference is not None and not any(p.requires_grad for p in reference.parameters())
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    # rollout: one response a prompt, padding after the first EOS, left-padded queries
    n_rows, width = rollout.responses.shape
    assert n_rows == len(PROMPTS) and width <= HYPER.response_length
    mask, ended = first_eos_mask(rollout.responses, tokenizer.eos_token_id)
    assert torch.equal(mask, rollout.response_mask) and torch.equal(ended, rollout.ended)
    assert (rollout.responses[mask == 0] == tokenizer.pad_token_id).all()
    assert (rollout.query_mask[:, -1] == 1).all()
    # evaluation: the policy is still the reference, and the value head says 0 everywhere
    on = rollout.response_mask.bool()
    assert evaluation.logprobs.shape == (n_rows, width)
    assert (evaluation.logprobs[on] < 0).all() and (evaluation.logprobs[~on] == 0).all()
    torch.testing.assert_close(evaluation.ref_logprobs, evaluation.logprobs, rtol=0, atol=1e-5)
    assert torch.count_nonzero(evaluation.values) == 0
    assert evaluation.entropy > 0


def _batch_loss(model: PolicyAndCritic, batch: Batch) -> tuple[float, float]:
    """(total loss, policy loss) of the whole batch under the current weights."""
    ids, mask, width = trim(batch.queries, batch.query_mask, batch.responses, batch.response_mask)
    with torch.no_grad():
        logits, values = model(ids, mask, positions(mask), width)
        loss, figures = ppo_loss(logits, values, batch.first_columns(width), HYPER, True)
    return float(loss), float(figures["policy_loss"])


def test_optimise_changes_the_parameters_and_lowers_the_loss(
    tiny_model_dir: Path, accelerator: Accelerator
) -> None:
    tokenizer, model, _, rollout, evaluation = _phases(tiny_model_dir, accelerator)

    def words(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [min(len(r.split()), 8) / 8 for r in responses]

    texts = tokenizer.batch_decode(rollout.responses, skip_special_tokens=True)
    b_scores, _ = sequence_scores(words, PROMPTS, texts, rollout.ended, -1.0)
    advantages = compute_advantages(b_scores, evaluation, rollout.response_mask, 0.15, HYPER)
    batch = Batch.of(rollout, evaluation, advantages)
    optimizer = build_optimizer(model, HYPER)
    model, optimizer = accelerator.prepare(model, optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_before, pg_before = _batch_loss(model, batch)

    stats = optimise(accelerator, model, optimizer, batch, HYPER, has_values=True)

    loss_after, pg_after = _batch_loss(model, batch)
    assert set(stats) == {
        "policy_loss",
        "value_loss",
        "clip_frac",
        "value_clip_frac",
        "approx_kl",
        "entropy",
    }
    assert stats["approx_kl"] > 0  # the policy moved away from π_old during the epochs
    assert loss_after < loss_before and pg_after < pg_before
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("policy.") for n in changed)
    assert any(n.startswith("value_head.") for n in changed)
