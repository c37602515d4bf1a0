"""PPO's rollout phase: which prompts each process takes, and a sampled response to each
from the current policy, with everything after the first EOS made padding.
IMPLEMENTATION_DETAILS.md, "Rollouts", lists the choices and their sources.

Shapes: B rows of the process's rollout batch, Q query columns (left-padded), T response
columns (right-padded)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from transformers import GenerationConfig

from clinalign.trainer.methods.ppo.checkpoint import LoopState
from clinalign.trainer.methods.ppo.config import PPOHyperparameters

# -- data ------------------------------------------------------------------------------------


def next_prompts(state: LoopState, n_prompts: int, count: int, seed: int) -> list[int]:
    """The next ``count`` prompt indices of a reshuffled-every-epoch order, the same on every
    process, advancing the loop state's data position."""
    taken: list[int] = []
    while len(taken) < count:
        order = torch.randperm(
            n_prompts, generator=torch.Generator().manual_seed(seed + state.data_epoch)
        ).tolist()
        room = min(count - len(taken), n_prompts - state.data_index)
        taken += order[state.data_index : state.data_index + room]
        state.data_index += room
        if state.data_index == n_prompts:
            state.data_epoch, state.data_index = state.data_epoch + 1, 0
    return taken


def local_prompts(
    state: LoopState, n_prompts: int, hyper: PPOHyperparameters, world: int, rank: int
) -> list[int]:
    """This process's prompt indices for the next rollout batch: rollout_batch_size / k
    prompts drawn (``next_prompts``), each repeated k = ``samples_per_prompt`` times in a row
    so that a prompt's responses are adjacent, and the ``rank``-th slice of that list."""
    k = hyper.samples_per_prompt
    local_size = hyper.rollout_batch_size // world
    drawn = next_prompts(state, n_prompts, hyper.rollout_batch_size // k, hyper.seed)
    chosen = [i for i in drawn for _ in range(k)]  # a prompt's k responses are adjacent
    return chosen[rank * local_size : (rank + 1) * local_size]


# -- responses -------------------------------------------------------------------------------


def generation_config(hyper: PPOHyperparameters, tokenizer: Any) -> GenerationConfig:
    """Sampling from the whole vocabulary at temperature T: no top-k, no top-p (N details
    "Response generation"), up to ``response_length`` new tokens, stopping at EOS."""
    return GenerationConfig(
        do_sample=True,
        temperature=hyper.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=hyper.response_length,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )


def first_eos_mask(responses: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): 1 up to and including each row's first EOS (all ones where there is
    none), and whether the row has an EOS. [B, T] → ([B, T] long, [B] bool)."""
    is_eos = responses == eos_id
    ended = is_eos.any(dim=1)
    n_tokens = responses.shape[1]
    first = torch.where(
        ended, is_eos.int().argmax(dim=1), torch.full_like(ended, n_tokens - 1, dtype=torch.long)
    )
    steps = torch.arange(n_tokens, device=responses.device)
    return (steps[None, :] <= first[:, None]).long(), ended


def trim(
    queries: torch.Tensor, q_mask: torch.Tensor, responses: torch.Tensor, r_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input ids [B, L], attention mask [B, L], kept response width W) for rows whose query
    columns all padding on the left, and response columns all padding on the right, are
    dropped: L = the kept query columns + W."""
    start = int((q_mask.sum(dim=0) > 0).int().argmax())
    width = int(r_mask.sum(dim=1).max())
    ids = torch.cat([queries[:, start:], responses[:, :width]], dim=1)
    mask = torch.cat([q_mask[:, start:], r_mask[:, :width]], dim=1)
    return ids, mask, width


@dataclass(frozen=True)
class Rollout:
    """One process's sampled batch."""

    queries: torch.Tensor  # [B, Q] left-padded prompt ids
    query_mask: torch.Tensor  # [B, Q]
    responses: torch.Tensor  # [B, T] padding after each row's first EOS
    response_mask: torch.Tensor  # [B, T] 1 up to and including the first EOS
    ended: torch.Tensor  # [B] bool: the response has an EOS

    def first_columns(self, width: int) -> Rollout:
        """The same rollout with responses cut to their first ``width`` columns."""
        return Rollout(
            self.queries,
            self.query_mask,
            self.responses[:, :width],
            self.response_mask[:, :width],
            self.ended,
        )


def generate_responses(
    policy: Any,
    tokenizer: Any,
    texts: Sequence[str],
    hyper: PPOHyperparameters,
    accelerator: Accelerator,
) -> Rollout:
    """The rollout phase: the rendered prompts ``texts`` left-padded (a long one cut from
    the left to ``max_prompt_length`` tokens) and one response to each sampled from
    ``policy`` (in eval mode; ``generation_config``), everything after its first EOS
    replaced by padding. Draws from the global RNG."""
    encoded = tokenizer(
        list(texts),
        add_special_tokens=False,
        padding=True,
        truncation=True,
        max_length=hyper.max_prompt_length,
        return_tensors="pt",
    )
    queries = encoded.input_ids.to(accelerator.device)  # [B, Q]
    q_mask = encoded.attention_mask.to(accelerator.device)
    with torch.no_grad(), accelerator.autocast():
        generated = policy.generate(
            input_ids=queries,
            attention_mask=q_mask,
            generation_config=generation_config(hyper, tokenizer),
        )
    responses = generated[:, queries.shape[1] :]  # [B, T]
    r_mask, ended = first_eos_mask(responses, tokenizer.eos_token_id)
    responses = torch.where(r_mask.bool(), responses, tokenizer.pad_token_id)
    return Rollout(queries, q_mask, responses, r_mask, ended)
