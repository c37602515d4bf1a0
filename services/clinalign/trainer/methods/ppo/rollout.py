"""PPO's rollout phase: which prompts each process takes, and a sampled response to each
from the current policy, with everything after the first EOS made padding.
IMPLEMENTATION_DETAILS.md, "Rollouts", lists the choices and their sources.

The sampling distribution is ours alone (issue 20): ``pinned_generation_config`` sets every
generation field that changes it to its "off" value and ``checkpoint_defaults_off`` keeps
the checkpoint's ``generation_config.json`` out of the fields it cannot pin, so an instruct
checkpoint's repetition penalty or min-p cannot make the rollout sample from one
distribution while the loss recomputes log-probabilities from another. Other samplers of a
policy (the policy gate) use the same two.

Shapes: B rows of the process's rollout batch, Q query columns (left-padded), T response
columns (right-padded)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
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


# Every GenerationConfig field that changes which token is drawn, at the value that switches
# it off. transformers (5.x) fills each field left None from the checkpoint's
# generation_config.json, then from its own defaults (top_k=50 among them), so a field left
# unset is the checkpoint's choice, not ours.
NEUTRAL_GENERATION = {
    # strategy: one sample per row, no beams
    "do_sample": True,
    "num_beams": 1,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "num_return_sequences": 1,
    "length_penalty": 1.0,
    "early_stopping": False,
    # warpers: the whole vocabulary
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,  # keeps every token; the only other "off" is None, which the checkpoint fills
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    # processors: no penalties, no bans, no forced lengths
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_new_tokens": 0,  # overrides min_length
    "suppress_tokens": [],
    "begin_suppress_tokens": [],
    "guidance_scale": 1.0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "token_healing": False,
    # outputs and cache: the token ids only
    "use_cache": True,
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict_in_generate": False,
}


def pinned_generation_config(
    max_new_tokens: int, eos_token_id: int, pad_token_id: int, temperature: float = 1.0
) -> GenerationConfig:
    """Ancestral sampling from the whole vocabulary at ``temperature`` (N details "Response
    generation"): no top-k, top-p or min-p, no penalties, up to ``max_new_tokens`` new
    tokens, stopping at ``eos_token_id``. Built from scratch with every field that changes
    the distribution set to the value that switches it off (``NEUTRAL_GENERATION``), so a
    checkpoint's ``generation_config.json`` cannot change it and the log-probabilities
    recomputed from the logits at ``temperature`` are those of the distribution sampled.
    Fields whose only "off" is None (forced BOS/EOS, bad words, sequence bias, watermarking,
    exponential length decay, top-h, stop strings, time limits, DoLa, contrastive and
    assisted decoding) cannot be pinned by a value: generate under
    ``checkpoint_defaults_off`` as well."""
    return GenerationConfig(
        **NEUTRAL_GENERATION,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


@contextlib.contextmanager
def checkpoint_defaults_off(model: Any) -> Iterator[None]:
    """Within the block, ``model`` (a transformers model, or a peft model around one)
    generates without its checkpoint's ``generation_config.json``: transformers fills the
    fields a ``generate`` call leaves None from ``model.generation_config``, so it is a
    fresh ``GenerationConfig()`` meanwhile and restored after (the saved model keeps its
    own). Not thread-safe: one generating caller per model."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


def generation_config(hyper: PPOHyperparameters, tokenizer: Any) -> GenerationConfig:
    """The rollout's ``pinned_generation_config``: temperature T, up to ``response_length``
    new tokens, the tokenizer's EOS and padding."""
    return pinned_generation_config(
        hyper.response_length, tokenizer.eos_token_id, tokenizer.pad_token_id, hyper.temperature
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
    ``policy`` (in eval mode; ``generation_config``, the checkpoint's own generation
    settings ignored: ``checkpoint_defaults_off``), everything after its first EOS
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
    with torch.no_grad(), accelerator.autocast(), checkpoint_defaults_off(policy):
        generated = policy.generate(
            input_ids=queries,
            attention_mask=q_mask,
            generation_config=generation_config(hyper, tokenizer),
        )
    responses = generated[:, queries.shape[1] :]  # [B, T]
    r_mask, ended = first_eos_mask(responses, tokenizer.eos_token_id)
    responses = torch.where(r_mask.bool(), responses, tokenizer.pad_token_id)
    return Rollout(queries, q_mask, responses, r_mask, ended)
