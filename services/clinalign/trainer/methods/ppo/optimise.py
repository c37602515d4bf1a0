"""PPO's optimisation phase: ``ppo_epochs`` passes over the rollout batch in ``minibatches``
shuffled minibatches, each in ``gradient_accumulation_steps`` micro-batches: the clipped
policy loss plus ``vf_coef`` times the clipped value loss (``core``), gradients clipped by
global norm, one optimiser step a minibatch. IMPLEMENTATION_DETAILS.md, "Losses and
optimisation", lists the choices.

Shapes: B rows of the process's rollout batch, MB of a micro-batch, Q query columns, T
response columns, V vocabulary; ``b_`` names index the batch and ``mb_`` a micro-batch, as
in CleanRL's ``ppo.py``."""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, fields

import torch
from accelerate import Accelerator
from torch import nn

from clinalign.trainer.methods.ppo import core
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.models import positions
from clinalign.trainer.methods.ppo.rollout import Rollout, trim
from clinalign.trainer.methods.ppo.scoring import Advantages, Evaluation

# the figures each micro-batch logs, in the order the iteration's figures list them
STATISTICS = ("policy_loss", "value_loss", "clip_frac", "value_clip_frac", "approx_kl", "entropy")


@dataclass(frozen=True)
class Batch:
    """What the PPO epochs read of a rollout batch (or, indexed, of a micro-batch of it)."""

    queries: torch.Tensor  # [B, Q] left-padded
    query_mask: torch.Tensor  # [B, Q]
    responses: torch.Tensor  # [B, T] right-padded
    response_mask: torch.Tensor  # [B, T]
    logprobs: torch.Tensor  # [B, T] log π_old
    values: torch.Tensor  # [B, T] V_old
    advantages: torch.Tensor  # [B, T]
    returns: torch.Tensor  # [B, T]

    @classmethod
    def of(cls, rollout: Rollout, evaluation: Evaluation, advantages: Advantages) -> Batch:
        return cls(
            rollout.queries,
            rollout.query_mask,
            rollout.responses,
            rollout.response_mask,
            evaluation.logprobs,
            evaluation.values,
            advantages.advantages,
            advantages.returns,
        )

    def rows(self, idx: torch.Tensor) -> Batch:
        """The rows ``idx`` [MB] of every field."""
        return Batch(*(getattr(self, f.name)[idx] for f in fields(self)))

    def first_columns(self, width: int) -> Batch:
        """The response-aligned fields cut to their first ``width`` columns."""
        return Batch(
            self.queries,
            self.query_mask,
            *(
                getattr(self, f.name)[:, :width]
                for f in fields(self)
                if f.name not in ("queries", "query_mask")
            ),
        )


def micro_batch_rows(hyper: PPOHyperparameters, world: int) -> int:
    """Rows a forward pass takes: a process's share of the rollout batch, split into
    ``minibatches``, each into ``gradient_accumulation_steps`` micro-batches."""
    return (
        hyper.rollout_batch_size // world // hyper.minibatches // hyper.gradient_accumulation_steps
    )


def ppo_loss(
    mb_logits: torch.Tensor,
    mb_new_values: torch.Tensor,
    mb: Batch,
    hyper: PPOHyperparameters,
    has_values: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss (), figures ()): the clipped policy loss (Schulman et al. 2017, eq. 7) plus
    ``vf_coef`` times the clipped value loss (zero without a critic), and the policy's and
    value function's clip fractions and approx-KL. ``mb_logits`` [MB, T, V] and
    ``mb_new_values`` [MB, T] are the model's on the micro-batch ``mb``, whose response fields
    are [MB, T]."""
    mb_new_logprobs = core.logprobs_from_logits(
        mb_logits.float(), mb.responses, hyper.temperature
    )  # [MB, T]
    pg_loss, clip_frac, approx_kl = core.policy_loss(
        mb_new_logprobs, mb.logprobs, mb.advantages, mb.response_mask, hyper.clip_range
    )
    if has_values:
        vf_loss, vf_clip = core.value_loss(
            mb_new_values, mb.values, mb.returns, mb.response_mask, hyper.clip_range_value
        )
    else:
        vf_loss = vf_clip = torch.zeros((), device=mb_new_values.device)
    loss = pg_loss + hyper.vf_coef * vf_loss
    figures = {
        "policy_loss": pg_loss,
        "value_loss": vf_loss,
        "clip_frac": clip_frac,
        "value_clip_frac": vf_clip,
        "approx_kl": approx_kl,
    }
    return loss, figures


def micro_batch_step(
    accelerator: Accelerator,
    model: nn.Module,
    batch: Batch,
    mb_inds: torch.Tensor,
    hyper: PPOHyperparameters,
    has_values: bool,
) -> dict[str, float]:
    """The forward pass, loss and backward pass (scaled by 1/accumulation steps) of the
    rows ``mb_inds`` [MB] of ``batch``; returns the micro-batch's figures, entropy included.
    The caller chooses whether the backward pass synchronises gradients."""
    mb = batch.rows(mb_inds)
    mb_ids, mb_mask, mb_width = trim(mb.queries, mb.query_mask, mb.responses, mb.response_mask)
    mb = mb.first_columns(mb_width)  # response fields [MB, T]
    with accelerator.autocast():
        mb_logits, mb_new_values = model(mb_ids, mb_mask, positions(mb_mask), mb_width)
        loss, figures = ppo_loss(mb_logits, mb_new_values, mb, hyper, has_values)
        accelerator.backward(loss / hyper.gradient_accumulation_steps)
    with torch.no_grad():
        figures["entropy"] = core.entropy_from_logits(
            mb_logits.detach().float() / hyper.temperature, mb.response_mask
        )
    return {key: float(figures[key].detach()) for key in STATISTICS}


def optimise(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    hyper: PPOHyperparameters,
    has_values: bool,
) -> dict[str, float]:
    """The PPO epochs over ``batch``; returns each figure's mean over its micro-batches.
    Reshuffles from the global RNG every epoch; gradient accumulation skips DDP's
    all-reduce (``no_sync``) on all but a minibatch's last micro-batch."""
    model.train()
    stats: dict[str, list[float]] = {key: [] for key in STATISTICS}
    local_size = batch.queries.shape[0]
    minibatch = local_size // hyper.minibatches
    micro = minibatch // hyper.gradient_accumulation_steps  # rows a forward pass takes
    for _ in range(hyper.ppo_epochs):
        b_order = torch.randperm(local_size).tolist()
        for start in range(0, local_size, minibatch):
            rows = b_order[start : start + minibatch]
            for m, m_start in enumerate(range(0, minibatch, micro)):
                mb_inds = torch.tensor(rows[m_start : m_start + micro], device=batch.queries.device)
                last = m == hyper.gradient_accumulation_steps - 1
                sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
                with sync:
                    figures = micro_batch_step(
                        accelerator, model, batch, mb_inds, hyper, has_values
                    )
                for key, value in figures.items():
                    stats[key].append(value)
            accelerator.clip_grad_norm_(model.parameters(), hyper.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {key: statistics.fmean(values) for key, values in stats.items()}
