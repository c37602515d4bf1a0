"""The demo's held-out evaluation maths: bootstrap interval, panel win rate, repetition;
the demonstrations file it fine-tunes on, and its contrast pairs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from clinalign.demo import stack_env
from clinalign.demo.evaluation import bootstrap, per_prompt, repeated_grams, win_rate
from clinalign.demo.pipeline import CONTRAST_AUTHOR, Pipeline, Plan, demonstrations
from clinalign.foundation.corpus import iter_qa_examples
from clinalign.monitor import retraining
from clinalign.monitor.config import MonitorSettings
from clinalign.simulation import rubric
from clinalign.simulation.degrade import drop_escalation, truncate
from clinalign.simulation.panel import SimulatedPanel


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n() -> None:
    values = [1.0] * 60 + [0.0] * 40
    low, high = bootstrap(values, seed=3)
    assert low < 0.6 < high
    wide = bootstrap(values[::5], seed=3)
    assert (wide[1] - wide[0]) > (high - low)
    assert bootstrap([0.5] * 10, seed=1) == (0.5, 0.5)


def test_repeated_grams() -> None:
    assert repeated_grams("take it with food. rest and drink water.") == 0.0
    looped = "drink plenty of water " * 5
    assert repeated_grams(looped) > 0.7
    assert repeated_grams("too short") == 0.0


def _intact_and_broken(n: int) -> tuple[list[str], list[str], list[str]]:
    """n held-out questions, their reference answers, and copies with one fault each."""
    questions, good, bad = [], [], []
    for example in iter_qa_examples(5, "heldout"):
        broken = drop_escalation(example) or truncate(example)
        if broken:
            questions.append(example.question)
            good.append(example.answer)
            bad.append(broken)
        if len(questions) == n:
            break
    return questions, good, bad


def test_panel_prefers_intact_answers_over_faulty_ones() -> None:
    """A win rate near 1 for reference answers against broken copies, near 0.5 against
    themselves, with intervals that say so."""
    questions, good, bad = _intact_and_broken(60)
    panel = SimulatedPanel(seed=1)
    better = win_rate(panel, questions, good, bad)
    assert better.rate > 0.85 and better.low > 0.5
    assert better.wins + better.ties + better.losses == 60
    same = win_rate(panel, questions, good, good)
    assert same.rate == 0.5 and same.ties == 60


def test_several_answers_per_prompt_are_not_independent_evidence() -> None:
    """With k answers a prompt, the interval is over prompts: duplicating every verdict k
    times gives the same rate and the same interval as one verdict a prompt."""
    questions, good, bad = _intact_and_broken(40)
    # the candidate wins on even prompts and loses on odd ones: a rate near 0.5
    cand = [g if i % 2 == 0 else b for i, (g, b) in enumerate(zip(good, bad, strict=True))]
    ref = [b if i % 2 == 0 else g for i, (g, b) in enumerate(zip(good, bad, strict=True))]
    one = win_rate(SimulatedPanel(seed=1), questions, cand, ref)
    k = 3
    tripled = win_rate(
        SimulatedPanel(seed=1),
        [q for q in questions for _ in range(k)],
        [a for a in cand for _ in range(k)],
        [b for b in ref for _ in range(k)],
        samples_per_prompt=k,
    )
    assert one.low < 0.45 and one.high > 0.55
    assert tripled.wins + tripled.ties + tripled.losses == k * k * 40  # every pair of a prompt
    # the panel's noise differs per verdict, so rates differ a little; the interval's width
    # stays that of 40 prompts, not 120
    assert abs(tripled.rate - one.rate) < 0.1
    assert (tripled.high - tripled.low) > 0.8 * (one.high - one.low)  # 0.58 if independent
    assert per_prompt([1.0, 0.0, 0.5, 0.5], 2) == [0.5, 0.5]
    with pytest.raises(ValueError, match="groups of 3"):
        per_prompt([1.0, 0.0], 3)


def test_shipped_demonstrations_are_clean_synthetic_answers() -> None:
    demos = demonstrations(Plan.full().demonstrations)
    assert len(demos) == Plan.full().demonstrations
    assert len({d["prompt"] for d in demos}) == len(demos)
    scores = [rubric.score(d["prompt"], d["completion"]).overall for d in demos[:100]]
    assert sum(scores) / len(scores) > 0.9


def test_contrast_pairs_pair_an_answer_with_its_faulty_copy() -> None:
    """Each curated answer is paired with itself plus one clinical fault; the faulty copy is
    stored under an author that no snapshot reads as a demonstration, and the rubric
    scores it lower than the answer."""

    class Recorder(Pipeline):
        def __init__(self) -> None:
            self.plan = dataclasses.replace(Plan.full(), contrast_pairs=50)
            self.prompts: list[str] = []
            self.rows: list[tuple[str, str, str]] = []

        async def store_prompts(self, texts: Any, *_: Any) -> list[str]:
            self.prompts = list(texts)
            return [f"p{i}" for i in range(len(self.prompts))]

        async def store_responses(self, rows: Any) -> list[str]:
            self.rows = list(rows)
            return [f"r{i}" for i in range(len(self.rows))]

    pipeline = Recorder()
    tasks = asyncio.run(pipeline._contrast_tasks())
    assert len(tasks) == 50 == len(pipeline.prompts)
    assert [t.response_ids for t in tasks[:2]] == [["r0", "r1"], ["r2", "r3"]]
    answers, faulty = pipeline.rows[0::2], pipeline.rows[1::2]
    assert {author for _, _, author in answers} == {""}
    assert {author for _, _, author in faulty} == {CONTRAST_AUTHOR}
    worse = [
        rubric.score(q, f[1]).overall < rubric.score(q, a[1]).overall
        for q, a, f in zip(pipeline.prompts, answers, faulty, strict=True)
    ]
    assert sum(worse) >= 0.9 * len(worse)


@pytest.mark.parametrize("plan", [Plan.full(), Plan.quick()], ids=["full", "quick"])
def test_the_loop_continues_the_served_models_with_the_plans_changes(
    plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor's retraining run in the demo: its reward model continues the served one
    (a warm start) with the plan's reward settings and their loop changes; its PPO job
    likewise."""
    env = stack_env(plan, threads=2)
    assert env["CLINALIGN_MONITOR_RETRAIN_REWARD_BASE_MODEL"] == retraining.SERVED_REWARD
    reward = json.loads(env["CLINALIGN_MONITOR_RETRAIN_REWARD_HYPERPARAMETERS"])
    assert reward == {**plan.reward, **plan.retrain_reward} and reward != plan.reward
    ppo = json.loads(env["CLINALIGN_MONITOR_RETRAIN_PPO_HYPERPARAMETERS"])
    assert ppo == {**plan.ppo, **plan.retrain_ppo}
    # the monitor reads them from its environment as they are
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = MonitorSettings()
    assert settings.retrain_reward_base_model == retraining.SERVED_REWARD
    assert settings.retrain_reward_hyperparameters == reward
    assert settings.retrain_ppo_hyperparameters == ppo
