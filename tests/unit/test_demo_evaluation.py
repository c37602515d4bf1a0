"""The demo's held-out evaluation maths: bootstrap interval, panel win rate, repetition,
and the demonstrations file it fine-tunes on."""

from __future__ import annotations

from clinalign.demo.evaluation import bootstrap, repeated_grams, win_rate
from clinalign.demo.pipeline import Plan, demonstrations
from clinalign.foundation.corpus import iter_qa_examples
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


def test_panel_prefers_intact_answers_over_faulty_ones() -> None:
    """A win rate near 1 for reference answers against broken copies, near 0.5 against
    themselves, with intervals that say so."""
    good, bad, questions = [], [], []
    for example in iter_qa_examples(5, "heldout"):
        broken = drop_escalation(example) or truncate(example)
        if broken:
            questions.append(example.question)
            good.append(example.answer)
            bad.append(broken)
        if len(questions) == 60:
            break
    panel = SimulatedPanel(seed=1)
    better = win_rate(panel, questions, good, bad)
    assert better.rate > 0.85 and better.low > 0.5
    assert better.wins + better.ties + better.losses == 60
    same = win_rate(panel, questions, good, good)
    assert same.rate == 0.5 and same.ties == 60


def test_shipped_demonstrations_are_clean_synthetic_answers() -> None:
    demos = demonstrations(Plan.full().demonstrations)
    assert len(demos) == Plan.full().demonstrations
    assert len({d["prompt"] for d in demos}) == len(demos)
    scores = [rubric.score(d["prompt"], d["completion"]).overall for d in demos[:100]]
    assert sum(scores) / len(scores) > 0.9
