"""Held-out evaluation of the demo's policies: rubric score, win rate against SFT judged by
the simulated panel, KL to SFT, response length and repetition.

The prompts are the ``clinical-heldout`` set: question phrasings no policy trained on
(SFT demonstrations, candidate pairs, PPO prompts and EHR traffic all come from the
``train`` phrasings). Every policy answers the same prompts with the same seed (common
random numbers), sampling at temperature 1 as PPO does. The judge is the simulated panel
(`clinalign.simulation`), which never reads the reward model, so a policy that games the
reward model without satisfying the rubric gains nothing here; response length and
repetition are reported beside the scores for the same reason.

Each policy answers every prompt ``samples_per_prompt`` (k) times. Win rate: the chance
that an answer of the RLHF policy beats an answer of SFT's to the same prompt. The panel
judges every one of the k x k pairs of a prompt (all pairs, not k matched ones: the same
estimate with less variance), its majority verdict counting 1 for a win, 0.5 for a tie and
0 for a loss; a prompt's points are averaged, and the 95 % interval is a percentile
bootstrap over prompts (so several answers to one prompt never count as independent
evidence). Rubric intervals are bootstrapped the same way.
"""

from __future__ import annotations

import random
import re
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clinalign.simulation import rubric
from clinalign.simulation.panel import SimulatedPanel, majority

_WORD = re.compile(r"[a-z0-9']+")


@dataclass
class PolicyEval:
    """One policy's answers to the held-out prompts and their figures."""

    name: str
    version: str
    texts: list[str]
    scores: list[float]  # rubric overall per answer
    criteria: dict[str, float]  # mean per criterion over answers where it applies
    kl_to_sft: float | None  # mean summed k1 KL per answer, nats
    mean_words: float
    repetition: float  # mean share of repeated word 4-grams
    ended: float  # share of answers that ended before the token limit
    samples_per_prompt: int = 1

    @property
    def rubric(self) -> float:
        return statistics.fmean(self.scores)


@dataclass
class WinRate:
    rate: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int


@dataclass
class Evaluation:
    prompts: int
    samples_per_prompt: int = 1
    policies: list[PolicyEval] = field(default_factory=list)
    win_rate_vs_sft: dict[str, WinRate] = field(default_factory=dict)
    rubric_interval: dict[str, tuple[float, float]] = field(default_factory=dict)


def repeated_grams(text: str) -> float:
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def bootstrap(values: Sequence[float], seed: int, n: int = 2000) -> tuple[float, float]:
    """Percentile 95 % interval of the mean of ``values``."""
    rng = random.Random(seed)
    k = len(values)
    means = sorted(statistics.fmean(rng.choices(values, k=k)) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def per_prompt(values: Sequence[float], k: int) -> list[float]:
    """Means of consecutive groups of ``k``: one value per prompt from its ``k`` answers."""
    if len(values) % k:
        raise ValueError(f"{len(values)} values do not split into groups of {k}")
    return [statistics.fmean(values[i : i + k]) for i in range(0, len(values), k)]


def evaluate_policy(
    name: str,
    version: str,
    model_dir: Path,
    prompts: Sequence[str],
    sft_dir: Path | None,
    *,
    max_new_tokens: int,
    seed: int,
    samples_per_prompt: int = 1,
) -> PolicyEval:
    """``prompts`` holds each prompt ``samples_per_prompt`` times in a row."""
    from clinalign.trainer.registry.policy_gate import sample

    # 128 rows a batch: a decoding step of a small model costs about as much for many
    # rows as for few, so bigger batches finish sooner (see docs/experiments.md, 2026-11-26)
    samples = sample(model_dir, prompts, max_new_tokens, seed, parent_dir=sft_dir, batch_size=128)
    scored = [rubric.score(p, t) for p, t in zip(prompts, samples.texts, strict=True)]
    criteria: dict[str, float] = {}
    for criterion in rubric.CRITERIA:
        values = [s.criteria[criterion] for s in scored if s.criteria[criterion] is not None]
        if values:
            criteria[criterion] = statistics.fmean(v for v in values if v is not None)
    return PolicyEval(
        name=name,
        version=version,
        texts=samples.texts,
        scores=[s.overall for s in scored],
        criteria=criteria,
        kl_to_sft=statistics.fmean(samples.kl_to_parent) if samples.kl_to_parent else None,
        mean_words=statistics.fmean(len(_WORD.findall(t.lower())) for t in samples.texts),
        repetition=statistics.fmean(repeated_grams(t) for t in samples.texts),
        ended=sum(samples.usable) / len(samples.usable),
        samples_per_prompt=samples_per_prompt,
    )


def win_rate(
    panel: SimulatedPanel,
    prompts: Sequence[str],
    candidate: Sequence[str],
    sft: Sequence[str],
    samples_per_prompt: int = 1,
) -> WinRate:
    """``prompts`` holds each prompt ``samples_per_prompt`` (k) times in a row, as the answers
    do; each of a prompt's k candidate answers is judged against each of its k SFT answers."""
    k = samples_per_prompt
    if not len(prompts) == len(candidate) == len(sft):
        raise ValueError("prompts, candidate and sft answers must be as many")
    if len(prompts) % k:
        raise ValueError(f"{len(prompts)} answers do not split into groups of {k}")
    points = []
    for start in range(0, len(prompts), k):
        question = prompts[start]
        for a in candidate[start : start + k]:
            for b in sft[start : start + k]:
                verdict = majority(panel.compare(question, a, b))
                points.append({"a": 1.0, "tie": 0.5, "b": 0.0}[verdict])
    by_prompt = per_prompt(points, k * k)
    low, high = bootstrap(by_prompt, seed=len(by_prompt))
    return WinRate(
        rate=statistics.fmean(points),
        low=low,
        high=high,
        wins=points.count(1.0),
        ties=points.count(0.5),
        losses=points.count(0.0),
    )


def evaluate(
    policies: Sequence[tuple[str, str, Path]],
    prompts: Sequence[str],
    *,
    sft_name: str = "sft",
    panel_seed: int = 1,
    max_new_tokens: int = 96,
    seed: int = 0,
    samples_per_prompt: int = 1,
    once: Collection[str] = (),
) -> Evaluation:
    """``policies``: (name, registry version, model directory) in report order; the one
    named ``sft_name`` is the reference for KL and win rate. The panel judging win rates is
    seeded apart from the one that labelled the training pairs. Policies named in ``once``
    (no win rate is judged for them) answer each prompt once, the others
    ``samples_per_prompt`` times."""
    by_name = {name: path for name, _, path in policies}
    sft_dir = by_name[sft_name]
    k = samples_per_prompt
    asked = [p for p in prompts for _ in range(k)]
    result = Evaluation(prompts=len(prompts), samples_per_prompt=k)
    for name, version, path in policies:
        n = 1 if name in once else k
        result.policies.append(
            evaluate_policy(
                name,
                version,
                path,
                [p for p in prompts for _ in range(n)],
                None if name == sft_name else sft_dir,
                max_new_tokens=max_new_tokens,
                seed=seed,
                samples_per_prompt=n,
            )
        )
    panel = SimulatedPanel(seed=panel_seed)
    sft = next(p for p in result.policies if p.name == sft_name)
    if sft.samples_per_prompt != k:
        raise ValueError(f"{sft_name} is the reference of every win rate: it cannot answer once")
    for p in result.policies:
        n = p.samples_per_prompt
        result.rubric_interval[p.name] = bootstrap(per_prompt(p.scores, n), seed=7)
        if p.name.startswith("rlhf") and n == k:
            result.win_rate_vs_sft[p.name] = win_rate(panel, asked, p.texts, sft.texts, k)
    return result
