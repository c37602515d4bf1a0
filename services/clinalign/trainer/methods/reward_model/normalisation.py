"""The reward model's normalisation (Ziegler et al. 2019, lm-human-preferences
``train_reward.py``): the mean and std of the trained model's raw rewards over responses
the reference policy samples for up to ``norm_prompts`` training prompts, at the
temperature PPO samples at. The reward service subtracts and divides by them, so PPO
starts from rewards of mean 0 and std 1. Samples of the policy, not the labelled
responses, because they are the distribution PPO will score."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from clinalign.common.prompts import render_user_prompt
from clinalign.common.reward_format import Pair, raw_rewards
from clinalign.trainer.methods.ppo.rollout import checkpoint_defaults_off, pinned_generation_config
from clinalign.trainer.methods.reward_model import bt

if TYPE_CHECKING:  # training imports this module
    from clinalign.trainer.methods.reward_model.training import RewardHyperparameters


def compute_normalisation(
    model: Any,
    tokenizer: Any,
    base_model: Path,
    pairs: Sequence[Pair],
    hyper: RewardHyperparameters,
) -> dict[str, Any]:
    """The reward service's normalisation of ``model``: the mean and std of its raw rewards
    on the reference policy's samples (``reference_responses``), and where they came from."""
    reference = reference_responses(base_model, [p.prompt for p in pairs], hyper)
    rewards, _ = raw_rewards(model, tokenizer, reference, batch_size=hyper.eval_batch_size)
    mean, std = bt.normalisation_stats(rewards)
    return {
        "mean": mean,
        "std": std,
        "n": len(rewards),
        "source": (
            f"reference policy {base_model.name}: {len(reference)} sampled responses "
            f"(temperature {hyper.norm_temperature:g}, up to {hyper.norm_max_new_tokens} new "
            "tokens) to training prompts"
        ),
    }


def reference_responses(
    base_model: Path, prompts: Sequence[str], hyper: RewardHyperparameters
) -> list[tuple[str, str]]:
    """(prompt, response) for up to ``norm_prompts`` distinct training prompts, picked by
    the seed, each answered by one sample of the reference policy."""
    distinct = sorted(set(prompts))
    chosen = random.Random(hyper.seed).sample(distinct, min(hyper.norm_prompts, len(distinct)))
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    tokenizer.padding_side = "left"  # batched generation continues every row at its end
    policy: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy.to(device).eval()
    out: list[tuple[str, str]] = []
    # PPO's sampling distribution, every setting pinned: a checkpoint's generation_config.json
    # must not make the statistics describe another one
    config = pinned_generation_config(
        hyper.norm_max_new_tokens,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        hyper.norm_temperature,
    )
    torch.manual_seed(hyper.seed)
    for start in range(0, len(chosen), hyper.eval_batch_size):
        batch_prompts = chosen[start : start + hyper.eval_batch_size]
        texts = [render_user_prompt(tokenizer, p) for p in batch_prompts]
        batch = tokenizer(texts, return_tensors="pt", padding=True).to(device)
        with torch.inference_mode(), checkpoint_defaults_off(policy):
            generated = policy.generate(**batch, generation_config=config)
        responses = tokenizer.batch_decode(
            generated[:, batch.input_ids.shape[1] :], skip_special_tokens=True
        )
        out.extend(zip(batch_prompts, (r.strip() for r in responses), strict=True))
    return out
