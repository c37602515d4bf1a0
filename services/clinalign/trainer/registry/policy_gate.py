"""The policy half of the promotion gate: is a candidate policy better than the one it
would replace, without drifting too far from the model it was trained from?

On the held-out prompt set (``clinical-heldout`` by default: question phrasings PPO never
sees), the candidate and the served policy (or, with none served, the candidate's parent)
each sample one response per prompt (temperature 1, no top-k/top-p, a fixed seed, so a
decision can be re-run). The served reward model scores both through
``RewardService.Score``; a response that is empty or never ends gets PPO's fixed penalty.

- ``reward_vs_served``: the candidate's mean held-out reward is not below the served one's;
- ``win_rate_vs_served``: the share of prompts on which the candidate's response scores
  higher (ties count a half) is above ``gate_min_win_rate``; the message gives a bootstrap
  95 % interval;
- ``kl_to_parent``: the mean per-response KL(candidate ‖ parent), estimated on the
  candidate's own samples as Σ_t log π(y_t) - log π_parent(y_t) (the k1 estimator PPO's
  penalty uses), is at most ``gate_max_kl`` nats. Skipped when the parent is unknown.

The model work (sampling, log-probabilities) runs in the trainer's process, in a thread; on
a cluster with large models it belongs in a job of its own (a noted limitation).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

# (prompts, responses) → (scores, the reward version that scored them)
PolicyScorer = Callable[[list[str], list[str]], Awaitable[tuple[list[float], str]]]

REWARD_VS_SERVED = "reward_vs_served"
WIN_RATE_VS_SERVED = "win_rate_vs_served"
KL_TO_PARENT = "kl_to_parent"
UNSCORABLE_PENALTY = -1.0  # PPO's missing_eos_penalty default


@dataclass(frozen=True)
class PolicyGateSettings:
    """The policy gate's settings (``TrainerSettings.gate_*``, where each is documented and
    has its default; ``TrainerSettings.policy_gate`` builds this)."""

    prompt_set: str
    prompts: int
    max_new_tokens: int
    min_win_rate: float
    max_kl: float
    seed: int = 0  # the sampling seed; no setting


@dataclass(frozen=True)
class Samples:
    texts: list[str]
    usable: list[bool]  # ended with EOS and not empty: the reward model can score it
    kl_to_parent: list[float]  # per response; empty when no parent was given


def sample(
    model_dir: Path,
    prompts: Sequence[str],
    max_new_tokens: int,
    seed: int,
    parent_dir: Path | None = None,
    batch_size: int = 64,
) -> Samples:
    """One response per prompt from the model at ``model_dir`` and, with ``parent_dir``,
    each response's summed log-probability ratio against the parent. Prompts go in batches
    of ``batch_size``: a decoding step costs about as much for 64 rows as for 16 with a small
    model, so 128 prompts took 6.3 s in batches of 64 and 11.0 s in batches of 16 (the demo's
    policy, two CPU cores)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinalign.common.prompts import render_user_prompt
    from clinalign.trainer.methods.ppo import core
    from clinalign.trainer.methods.ppo.trainer import first_eos_mask

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    model.to(device).eval()
    parent: Any = AutoModelForCausalLM.from_pretrained(parent_dir) if parent_dir else None
    if parent is not None:
        parent.to(device).eval()
    texts: list[str] = []
    usable: list[bool] = []
    kls: list[float] = []
    for start in range(0, len(prompts), batch_size):
        batch = [render_user_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        enc = tokenizer(batch, add_special_tokens=False, padding=True, return_tensors="pt").to(
            device
        )
        torch.manual_seed(seed + start)  # generate draws from the global generator
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        responses = out[:, enc.input_ids.shape[1] :]
        mask, ended = first_eos_mask(responses, tokenizer.eos_token_id)
        responses = torch.where(mask.bool(), responses, tokenizer.pad_token_id)
        decoded = tokenizer.batch_decode(responses, skip_special_tokens=True)
        texts += decoded
        usable += [bool(e) and bool(t.strip()) for e, t in zip(ended, decoded, strict=True)]
        if parent is not None:
            ids = torch.cat([enc.input_ids, responses], dim=1)
            attention = torch.cat([enc.attention_mask, mask], dim=1)
            positions = (attention.cumsum(1) - 1).clamp(min=0)
            width = responses.shape[1]
            with torch.no_grad():
                logprobs = []
                for m in (model, parent):
                    logits = m(
                        input_ids=ids,
                        attention_mask=attention,
                        position_ids=positions,
                        logits_to_keep=width + 1,
                    ).logits[:, :-1]
                    logprobs.append(core.logprobs_from_logits(logits.float(), responses))
            seq_kl = (core.kl_k1(logprobs[0], logprobs[1]) * mask).sum(dim=1)
            kls += [float(v) for v in seq_kl]
    return Samples(texts, usable, kls)


async def scores(
    score: PolicyScorer, prompts: list[str], samples: Samples
) -> tuple[list[float], str]:
    """The reward of each response: the reward model's where it can score, the fixed
    penalty where the response is empty or never ended."""
    index = [i for i, ok in enumerate(samples.usable) if ok]
    got, version = (
        await score([prompts[i] for i in index], [samples.texts[i] for i in index])
        if index
        else ([], "")
    )
    out = [UNSCORABLE_PENALTY] * len(prompts)
    for i, value in zip(index, got, strict=True):
        out[i] = float(value)
    return out, version


def _wins(candidate: Sequence[float], baseline: Sequence[float]) -> list[float]:
    return [
        1.0 if c > b else 0.5 if c == b else 0.0 for c, b in zip(candidate, baseline, strict=True)
    ]


def win_rate(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """The share of prompts on which the candidate scores higher; a tie counts a half."""
    return fmean(_wins(candidate, baseline))


def bootstrap_interval(
    candidate: Sequence[float], baseline: Sequence[float], n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval of the win rate over prompts."""
    rng = random.Random(seed)
    wins = _wins(candidate, baseline)
    n = len(wins)
    rates = sorted(fmean(rng.choices(wins, k=n)) for _ in range(n_resamples))
    return rates[int(0.025 * n_resamples)], rates[int(0.975 * n_resamples) - 1]
