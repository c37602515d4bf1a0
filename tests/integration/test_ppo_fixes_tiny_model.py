"""Issue 20's PPO fixes on the tiny fixture model: a checkpoint's ``generation_config.json``
cannot change the rollout's distribution."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers import GenerationConfig

from clinalign.common.prompts import render_user_prompt
from clinalign.trainer.methods.ppo import core
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.models import build_models, load_tokenizer, positions
from clinalign.trainer.methods.ppo.rollout import (
    Rollout,
    checkpoint_defaults_off,
    generate_responses,
    generation_config,
)

PROMPTS = [f"I have had a dry cough for {n} days. What should I do?" for n in range(2, 6)]
ANSWERS = ["Rest, drink fluids and see a doctor if it lasts.", "See your GP."]
HYPER = PPOHyperparameters(
    rollout_batch_size=4,
    minibatches=2,
    ppo_epochs=2,
    response_length=10,
    temperature=0.7,  # not 1, so the log-probabilities must use it to match the sampler
    learning_rate=1e-2,
    checkpoint_every=0,
    seed=3,
)
# Every setting an instruct checkpoint might carry that would change what is sampled.
HOSTILE_GENERATION = {
    "do_sample": False,
    "temperature": 0.3,
    "top_k": 3,
    "top_p": 0.5,
    "min_p": 0.2,
    "typical_p": 0.5,
    "epsilon_cutoff": 0.001,
    "eta_cutoff": 0.001,
    "repetition_penalty": 2.0,
    "no_repeat_ngram_size": 2,
    "min_new_tokens": 4,
    "suppress_tokens": [5, 6],
    "begin_suppress_tokens": [7],
    "bad_words_ids": [[8]],
    "sequence_bias": [[[9], 5.0]],
    "exponential_decay_length_penalty": [2, 1.5],
    "forced_eos_token_id": 2,
    "renormalize_logits": True,
    "max_new_tokens": 3,
}


@pytest.fixture
def accelerator() -> Iterator[Accelerator]:
    AcceleratorState._reset_state(reset_partial_state=False)  # as train_ppo does
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=False)


# -- the rollout samples from the distribution the loss recomputes --------------------------


def _hostile_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    hostile = tmp_path / "hostile"
    shutil.copytree(tiny_model_dir, hostile)
    config = json.loads((hostile / "generation_config.json").read_text())
    (hostile / "generation_config.json").write_text(json.dumps({**config, **HOSTILE_GENERATION}))
    return hostile


def _rollout(model_dir: Path, accelerator: Accelerator) -> tuple[Any, Any, Rollout]:
    tokenizer = load_tokenizer(model_dir)
    model, _ = build_models(model_dir, tokenizer, HYPER, accelerator.device)
    model.eval()
    texts = [render_user_prompt(tokenizer, p) for p in PROMPTS]
    torch.manual_seed(11)
    return model, tokenizer, generate_responses(model.policy, tokenizer, texts, HYPER, accelerator)


def _logprobs(model: Any, rollout: Rollout) -> torch.Tensor:
    """log π of each sampled token recomputed as the loss does: [B, T]."""
    ids = torch.cat([rollout.queries, rollout.responses], dim=1)
    mask = torch.cat([rollout.query_mask, rollout.response_mask], dim=1)
    width = rollout.responses.shape[1]
    with torch.no_grad():
        logits, _ = model(ids, mask, positions(mask), width)
    return core.logprobs_from_logits(logits.float(), rollout.responses, HYPER.temperature)


def test_a_checkpoints_generation_config_cannot_change_the_rollout(
    tiny_model_dir: Path, tmp_path: Path, accelerator: Accelerator
) -> None:
    hostile = _hostile_copy(tiny_model_dir, tmp_path)
    plain_model, _, plain = _rollout(tiny_model_dir, accelerator)
    hostile_model, tokenizer, pinned = _rollout(hostile, accelerator)
    assert torch.equal(plain.responses, pinned.responses)
    assert torch.equal(plain.response_mask, pinned.response_mask)
    torch.testing.assert_close(_logprobs(plain_model, plain), _logprobs(hostile_model, pinned))
    # the checkpoint's settings are still there (the saved policy keeps them)
    assert hostile_model.policy.generation_config.repetition_penalty == 2.0

    # what generate sampled from is what the loss recomputes: the processed scores at each
    # step, log-softmaxed, at the sampled tokens
    config = generation_config(HYPER, tokenizer)
    config.output_scores = config.return_dict_in_generate = True
    torch.manual_seed(11)
    with torch.no_grad(), checkpoint_defaults_off(hostile_model.policy):
        out = hostile_model.policy.generate(
            input_ids=pinned.queries, attention_mask=pinned.query_mask, generation_config=config
        )
    steps = torch.stack(out.scores, dim=1)  # [B, T, V]
    width = pinned.responses.shape[1]
    sampled = torch.log_softmax(steps[:, :width].float(), dim=-1).gather(
        -1, pinned.responses[..., None]
    )[..., 0]
    keep = pinned.response_mask.bool()
    torch.testing.assert_close(sampled[keep], _logprobs(hostile_model, pinned)[keep])

    # the settings the rollout used before issue 20 let the checkpoint in
    unpinned = GenerationConfig(
        do_sample=True,
        temperature=HYPER.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=HYPER.response_length,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(11)
    with torch.no_grad():
        leaked = hostile_model.policy.generate(
            input_ids=pinned.queries, attention_mask=pinned.query_mask, generation_config=unpinned
        )[:, pinned.queries.shape[1] :]
    assert not torch.equal(leaked[:, :width], pinned.responses)
