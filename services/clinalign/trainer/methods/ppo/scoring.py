"""PPO's score and advantage phases: one forward pass of policy, critic and reference over
each query + response (old log-probabilities, values, reference log-probabilities), the
sequence scores (finished responses scored by the reward model, the rest penalised), and
the per-token rewards, advantages and returns (rloo's advantages whitened by scale only, so
each prompt's leave-one-out advantages keep their zero sum: issue 20). The maths is in ``core``;
IMPLEMENTATION_DETAILS.md, "Rewards" and "Advantages and returns", lists the choices.

Shapes: B rows of the process's rollout batch, T response columns (right-padded), F the
finished responses; ``b_`` names index the batch, ``f_`` its finished responses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from accelerate import Accelerator
from torch import nn

from clinalign.trainer.methods.ppo import constraint, core
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.models import positions
from clinalign.trainer.methods.ppo.rollout import Rollout, trim

# (prompts, responses) → one score per pair, higher is better
ScoreFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
# (prompts, responses) → one cost per pair in [0, 1], higher is more harmful (``constraint``)
CostFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
# (input ids [B, L], attention mask [B, L], response width W) → log π_ref [B, W]
ReferenceFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    """What the rollout's forward passes give, on its responses' T columns."""

    logprobs: torch.Tensor  # [B, T] log π_old of each response token
    ref_logprobs: torch.Tensor  # [B, T] log π_ref
    values: torch.Tensor  # [B, T] V_old of the state before each token (0 without a critic)
    entropy: float  # mean per-token entropy of π_old over response tokens


def evaluate_rollout(
    model: nn.Module,
    reference: ReferenceFn,
    rollout: Rollout,
    micro: int,
    temperature: float,
    accelerator: Accelerator,
) -> tuple[Rollout, Evaluation]:
    """(the rollout cut to its longest response's T columns, its evaluation): old
    log-probabilities and values from ``model`` (a ``PolicyAndCritic``, possibly wrapped) and
    reference log-probabilities, ``micro`` rows at a time so that no [B, T, V] logits tensor
    is larger than a training step's (TRL ``local_rollout_forward_batch_size``)."""
    queries, q_mask = rollout.queries, rollout.query_mask
    responses, r_mask = rollout.responses, rollout.response_mask
    n_rows = queries.shape[0]
    width = int(r_mask.sum(dim=1).max())
    b_logprobs = torch.zeros(n_rows, width, device=queries.device)  # [B, T]
    b_ref_logprobs = torch.zeros_like(b_logprobs)
    b_values = torch.zeros_like(b_logprobs)
    entropy_sum = 0.0
    with torch.no_grad(), accelerator.autocast():
        for start in range(0, n_rows, micro):
            chunk = slice(start, start + micro)
            ids, mask, w = trim(queries[chunk], q_mask[chunk], responses[chunk], r_mask[chunk])
            logits, b_values[chunk, :w] = model(ids, mask, positions(mask), w)
            b_logprobs[chunk, :w] = core.logprobs_from_logits(
                logits.float(), ids[:, -w:], temperature
            )
            tokens = r_mask[chunk, :w]
            entropy = core.entropy_from_logits(logits.float() / temperature, tokens)
            entropy_sum += float(entropy) * float(tokens.sum())
            del logits
            b_ref_logprobs[chunk, :w] = reference(ids, mask, w)
    evaluation = Evaluation(b_logprobs, b_ref_logprobs, b_values, entropy_sum / float(r_mask.sum()))
    return rollout.first_columns(width), evaluation


def sequence_scores(
    score: ScoreFn,
    prompts: Sequence[str],
    texts: Sequence[str],
    b_ended: torch.Tensor,
    penalty: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B] float32, finished [B] bool) of B decoded responses to ``prompts``: the
    finished ones (``core.finished_responses``: ended, not blank) go to ``score`` in one
    call, in row order; the rest get ``penalty`` without a call
    (``core.penalise_unfinished``)."""
    b_blank = torch.tensor([not text.strip() for text in texts], dtype=torch.bool)
    b_finished = core.finished_responses(b_ended.cpu(), b_blank)  # [B]
    rows = b_finished.nonzero().flatten().tolist()
    got: Sequence[float] = []
    if rows:
        got = score([prompts[i] for i in rows], [texts[i] for i in rows])
        if len(got) != len(rows):
            raise RuntimeError(f"the scorer returned {len(got)} scores for {len(rows)}")
    f_scores = torch.tensor([float(s) for s in got], dtype=torch.float32)  # [F]
    return core.penalise_unfinished(f_scores, b_finished, penalty), b_finished


def sequence_costs(
    cost: CostFn, prompts: Sequence[str], texts: Sequence[str], b_finished: torch.Tensor
) -> torch.Tensor:
    """Costs [B] float32 of B decoded responses: the finished ones from ``cost`` in one call,
    in row order, each in [0, 1]; 0 for the rest, which the constraint leaves out
    (``constraint.expected_cost``) and which keep their fixed penalty."""
    rows = b_finished.nonzero().flatten().tolist()
    b_costs = torch.zeros(len(texts), dtype=torch.float32)
    if rows:
        got = [float(c) for c in cost([prompts[i] for i in rows], [texts[i] for i in rows])]
        if len(got) != len(rows):
            raise RuntimeError(f"the cost function returned {len(got)} costs for {len(rows)}")
        if any(not 0.0 <= c <= 1.0 for c in got):
            raise RuntimeError("the cost function returned a cost outside [0, 1]")
        b_costs[rows] = torch.tensor(got, dtype=torch.float32)
    return b_costs


@dataclass(frozen=True)
class Scored:
    """A rollout's sequence scores, and what the advantages read."""

    scores: torch.Tensor  # [B] the scorer's, the fixed penalty for the unfinished
    finished: torch.Tensor  # [B] bool: ended with some text
    objective: torch.Tensor  # [B] the scores, or under a cost constraint (R - λC)/(1 + λ)
    figures: dict[str, float]  # the constraint's logged figures; empty without one


def score_rollout(
    score: ScoreFn,
    tokenizer: Any,
    prompts: Sequence[str],
    rollout: Rollout,
    hyper: PPOHyperparameters,
    multiplier: float,
    cost: CostFn | None = None,
) -> Scored:
    """The rollout's responses decoded and scored against their ``prompts`` by
    ``sequence_scores`` (on the rollout's device); with ``cost``, the finished ones costed
    by ``sequence_costs`` and their scores mixed with the costs at λ = ``multiplier``
    (``constraint.lagrangian_scores``)."""
    texts = tokenizer.batch_decode(rollout.responses, skip_special_tokens=True)
    b_scores, b_finished = sequence_scores(
        score, prompts, texts, rollout.ended, hyper.missing_eos_penalty
    )
    b_scores = b_scores.to(rollout.responses.device)
    if cost is None:
        return Scored(b_scores, b_finished, b_scores, {})
    b_costs = sequence_costs(cost, prompts, texts, b_finished).to(b_scores.device)
    b_finished_here = b_finished.to(b_scores.device)
    b_mixed = constraint.lagrangian_scores(b_scores, b_costs, b_finished_here, multiplier)
    figures = constraint.constraint_figures(b_mixed, b_costs, b_finished_here, hyper.cost_budget)
    return Scored(b_scores, b_finished, b_mixed, figures)


@dataclass(frozen=True)
class Advantages:
    """Per-token rewards and what GAE (or rloo) makes of them."""

    rewards: torch.Tensor  # [B, T] -β·KL_t, plus the score at the last response token
    non_score: torch.Tensor  # [B, T] -β·KL_t
    kl: torch.Tensor  # [B, T] the per-token KL estimate
    advantages: torch.Tensor  # [B, T] whitened when ``whiten_advantages``; 0 on padding
    returns: torch.Tensor  # [B, T] the value targets (the old values under rloo)


def compute_advantages(
    b_scores: torch.Tensor,
    evaluation: Evaluation,
    b_mask: torch.Tensor,
    kl_coef: float,
    hyper: PPOHyperparameters,
) -> Advantages:
    """Rewards r_t = -β·KL_t plus the score at the last token (``core.token_rewards``), then
    advantages and returns by GAE over the old values or, with the ``rloo`` estimator, each
    response's return against the other responses to its prompt; advantages whitened over
    this process's batch: GAE's per token (mean and scale), rloo's per response and by
    scale only, so that a prompt's leave-one-out advantages still sum to zero
    (``core.scale_sequence_advantages``). Shapes [B], [B, T] mask → [B, T] each."""
    b_rewards, b_non_score, b_kl = core.token_rewards(
        b_scores,
        evaluation.logprobs,
        evaluation.ref_logprobs,
        b_mask,
        kl_coef,
        cast(Literal["k1", "k3"], hyper.kl_estimator),
    )
    if hyper.advantage_estimator == "rloo":
        b_advantages = core.rloo_advantages(b_rewards, b_mask, hyper.samples_per_prompt)
        b_returns = evaluation.values
    else:
        b_advantages, b_returns = core.gae(
            b_rewards, evaluation.values, b_mask, hyper.gamma, hyper.lam
        )
    if hyper.whiten_advantages and hyper.advantage_estimator == "rloo":
        b_advantages = core.scale_sequence_advantages(b_advantages, b_mask)
    elif hyper.whiten_advantages and int(b_mask.sum()) > 1:
        b_advantages = core.masked_whiten(b_advantages, b_mask) * b_mask
    return Advantages(b_rewards, b_non_score, b_kl, b_advantages, b_returns)
