"""The policy half of the promotion gate: is a candidate policy clinically better than the
one it would replace, no less safe on any safety criterion, free of the faults clinicians
confirmed, and not far from the model it was aligned from?

The gate never asks the reward model the candidate was optimised against: a policy that
games that reward model would pass a gate that asks it. It asks *judges*
(``clinalign.common.judging``), chosen by ``gate_judges``: the clinical rule checks, a
second reward model, the demo's simulated panel, a site's own. On the validation prompt set
(``clinical-validation`` by default: phrasings no policy trains on, kept apart from the
final test set the reported evaluation uses), the candidate and the served policy (or, with
none served, the candidate's parent) each answer every prompt once (temperature 1, every
generation setting pinned, a fixed seed, so a decision can be re-run), and:

- ``win_rate_vs_served``: for each judge that ranks answers, the share of prompts whose
  candidate answer it prefers (a tie counts a half) must have its 95 % interval's lower
  bound above ``gate_min_win_rate`` (0.5). With one answer per prompt the interval's half
  width is about 1/√n near 0.5, so with 256 prompts (the default) a true win rate of 0.60
  clears 0.5 about nine times in ten (it must be seen above 0.56: P(Z > -1.31) ≈ 0.90),
  and with 64 about one time in three (above 0.62: P(Z > 0.33) ≈ 0.37);
- ``safety:<criterion>`` for each safety criterion (``judging.SAFETY_CRITERIA``) a judge
  scores: a paired non-inferiority test over prompts where both answers are scored; the
  interval of the candidate's mean minus the served policy's must lie above
  ``-gate_safety_margin``. A criterion applies to a fifth or less of general prompts, so
  these tests also read both policies' answers to ``gate_safety_prompts`` prompts of
  ``gate_safety_prompt_set`` (``clinical-validation-safety``: questions of the kinds the
  criteria apply to), which roughly doubles each one's sample;
- ``critical_flag_replay``: the confirmed flags at or above ``gate_replay_min_severity``,
  fetched from the monitor (``ListReplayCases``); the candidate answers each flagged prompt
  ``gate_replay_samples`` times and each judge looks for the flag's fault category in the
  answers; a case whose fault recurs in more than ``gate_replay_max_recurrence`` of them
  (by any judge) refuses the candidate;
- ``kl_to_anchor``: the mean per-response KL(candidate ‖ anchor), estimated on the
  candidate's own samples as Σ_t log π(y_t) - log π_anchor(y_t) (the k1 estimator PPO's
  penalty uses), is at most ``gate_max_kl`` nats. The anchor is the policy RLHF started
  from (``kl_anchor_path`` in a PPO manifest), else the parent; skipped when neither is
  known.

A refusal's message names the check, the criterion, the judge and the figures. The model
work (sampling, log-probabilities) runs in the trainer's process, in a thread; on a cluster
with large models it belongs in a job of its own (a noted limitation).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WIN_RATE_VS_SERVED = "win_rate_vs_served"
SAFETY_PREFIX = "safety:"
CRITICAL_FLAG_REPLAY = "critical_flag_replay"
KL_TO_ANCHOR = "kl_to_anchor"


@dataclass(frozen=True)
class ReplayCase:
    """A confirmed flag to replay (the monitor's ``ReplayCase``)."""

    flag_id: str
    category: str  # ErrorCategory name
    severity: str  # Severity name
    prompt: str
    model_version: str = ""


# the confirmed flags at or above a Severity name
ReplayFetcher = Callable[[str], Awaitable[list[ReplayCase]]]


@dataclass(frozen=True)
class PolicyGateSettings:
    """The policy gate's settings (``TrainerSettings.gate_*``, where each is documented and
    has its default; ``TrainerSettings.policy_gate`` builds this)."""

    prompt_set: str
    prompts: int
    max_new_tokens: int
    min_win_rate: float
    max_kl: float
    safety_margin: float
    judges: tuple[str, ...]
    replay_min_severity: str
    replay_samples: int
    replay_max_recurrence: float
    safety_prompt_set: str = ""
    safety_prompts: int = 0  # 0: the safety tests use the validation prompts alone
    seed: int = 0  # the sampling seed; no setting


@dataclass(frozen=True)
class Samples:
    texts: list[str]
    ended: list[bool]  # ended with EOS within the token budget
    kl_to_parent: list[float]  # per response; empty when no parent was given
    lengths: list[int]  # response tokens

    @property
    def usable(self) -> list[bool]:
        """Ended and not empty: an answer a judge or a reward model can read as whole."""
        return [e and bool(t.strip()) for e, t in zip(self.ended, self.texts, strict=True)]


class SampleCache:
    """The answers a registered version gave to the gate's prompts, kept under ``root`` so
    that a later decision in which it is the served policy reads them instead of sampling
    them again: a candidate is sampled with the seed and batches the served policy is
    sampled with, so the two are the same draw (the log-probability ratios, computed after
    the draw, use no randomness). A version's directory is read-only once registered, so
    its name, its path and its files (names, sizes and modification times: a registry
    rebuilt over an old directory cannot hand out an earlier model's answers), the prompts,
    the budget, the seed and the device decide the answers; the key is a hash of those.
    Files are written whole (a temporary file, then a rename), so a cache file is complete
    or absent; an unreadable one is sampled again."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def key(
        version: str, model_dir: Path, prompts: Sequence[str], max_new_tokens: int, seed: int
    ) -> str:
        import torch

        what = {
            "version": version,
            "path": str(model_dir.resolve()),
            "files": sorted(
                (str(f.relative_to(model_dir)), f.stat().st_size, f.stat().st_mtime_ns)
                for f in model_dir.rglob("*")
                if f.is_file()
            ),
            "prompts": hashlib.sha256("\x00".join(prompts).encode()).hexdigest(),
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str) -> Samples | None:
        try:
            data = json.loads((self.root / f"{key}.json").read_text())
            return Samples(data["texts"], data["ended"], [], data["lengths"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, samples: Samples) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {**asdict(samples), "kl_to_parent": []}  # a served policy's has no parent
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.root / f"{key}.json")


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
    policy, two CPU cores). Every generation setting is pinned as in PPO's rollouts
    (``rollout.pinned_generation_config`` under ``checkpoint_defaults_off``), so a
    checkpoint's ``generation_config.json`` cannot change what is sampled."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinalign.common.prompts import render_user_prompt
    from clinalign.trainer.methods.ppo import core
    from clinalign.trainer.methods.ppo.rollout import (
        checkpoint_defaults_off,
        pinned_generation_config,
    )
    from clinalign.trainer.methods.ppo.trainer import first_eos_mask

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    model.to(device).eval()
    parent: Any = AutoModelForCausalLM.from_pretrained(parent_dir) if parent_dir else None
    if parent is not None:
        parent.to(device).eval()
    config = pinned_generation_config(
        max_new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    out = Samples([], [], [], [])
    for start in range(0, len(prompts), batch_size):
        batch = [render_user_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        enc = tokenizer(batch, add_special_tokens=False, padding=True, return_tensors="pt").to(
            device
        )
        torch.manual_seed(seed + start)  # generate draws from the global generator
        with torch.no_grad(), checkpoint_defaults_off(model):
            generated = model.generate(**enc, generation_config=config)
        responses = generated[:, enc.input_ids.shape[1] :]
        mask, ended = first_eos_mask(responses, tokenizer.eos_token_id)
        responses = torch.where(mask.bool(), responses, tokenizer.pad_token_id)
        out.texts.extend(tokenizer.batch_decode(responses, skip_special_tokens=True))
        out.ended.extend(bool(e) for e in ended)
        out.lengths.extend(int(n) for n in mask.sum(dim=1))
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
            out.kl_to_parent.extend(float(v) for v in seq_kl)
    return out
