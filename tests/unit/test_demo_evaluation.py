"""The demo's reported evaluation, from hand-made answers (no model): the panel's win rates
(overall, both ended, length-controlled), per-criterion scores, safety verdicts, the report's
table and JSON; the demonstrations file it fine-tunes on, and its contrast pairs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from clinalign.common.judging import SAFETY_CRITERIA
from clinalign.demo import report, stack_env
from clinalign.demo.evaluation import (
    Evaluation,
    PolicyEval,
    Round,
    criterion_by_prompt,
    judge,
    per_prompt,
    repeated_grams,
    safety_verdicts,
    win_rates,
    words,
)
from clinalign.demo.pipeline import CONTRAST_AUTHOR, Figures, Pipeline, Plan, demonstrations
from clinalign.foundation.corpus import iter_qa_examples
from clinalign.monitor import retraining
from clinalign.monitor.config import MonitorSettings
from clinalign.simulation import rubric
from clinalign.simulation.degrade import drop_escalation, truncate
from clinalign.simulation.panel import SimulatedPanel


def _policy(
    name: str,
    prompts: Sequence[str],
    texts: Sequence[str],
    ended: Sequence[bool] | None = None,
    k: int = 1,
) -> PolicyEval:
    """A policy's evaluation from hand-made answers, scored by the rubric as a model's are;
    ``prompts`` and ``texts`` hold each prompt's k answers in a row."""
    scored = [rubric.score(p, t) for p, t in zip(prompts, texts, strict=True)]
    return PolicyEval(
        name=name,
        version=f"{name}-v",
        texts=list(texts),
        scores=[s.overall for s in scored],
        criterion_scores=[dict(s.criteria) for s in scored],
        ended_answers=list(ended) if ended is not None else [True] * len(texts),
        words=[words(t) for t in texts],
        kl_to_sft=None if name == "sft" else 1.5,
        repetition=0.0,
        samples_per_prompt=k,
    )


def _repeat(values: Sequence[Any], k: int) -> list[Any]:
    return [v for v in values for _ in range(k)]


def test_repetition_and_words() -> None:
    assert repeated_grams("take it with food. rest and drink water.") == 0.0
    looped = "drink plenty of water " * 5
    assert repeated_grams(looped) > 0.7
    assert repeated_grams("too short") == 0.0
    assert words("Take 1-2 tablets, don't exceed 8.") == 7


def test_per_prompt_means_skip_criteria_that_do_not_apply() -> None:
    assert per_prompt([1.0, 0.0, 0.5, 0.5], 2) == [0.5, 0.5]
    with pytest.raises(ValueError, match="groups of 3"):
        per_prompt([1.0, 0.0], 3)
    scores: list[dict[str, float | None]] = [
        {"dose_safety": 1.0},
        {"dose_safety": None},
        {"dose_safety": None},
        {},
    ]
    assert criterion_by_prompt(scores, "dose_safety", 2) == [1.0, None]
    assert criterion_by_prompt(scores, "dose_safety", 1) == [1.0, None, None, None]


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


def _truncated(n: int) -> tuple[list[str], list[str], list[str]]:
    """n held-out questions, their reference answers, and the answers cut off mid-way (as
    a token budget cuts them)."""
    questions, good, cut = [], [], []
    for example in iter_qa_examples(5, "heldout"):
        found = example.answer.split()
        if len(found) >= 20:
            questions.append(example.question)
            good.append(example.answer)
            cut.append(" ".join(found[: len(found) // 2]))
        if len(questions) == n:
            break
    return questions, good, cut


def test_panel_prefers_intact_answers_over_faulty_ones() -> None:
    """A win rate near 1 for reference answers against broken copies, exactly 0.5 against
    themselves, with intervals that say so."""
    questions, good, bad = _intact_and_broken(60)
    panel = SimulatedPanel(seed=1)
    better = win_rates(
        judge(panel, questions, good, bad),
        _policy("rlhf-1", questions, good),
        _policy("sft", questions, bad),
    )
    assert better.rate > 0.85 and better.low > 0.5 and better.overall.n == 60
    assert better.wins + better.ties + better.losses == 60 == better.both_ended_pairs
    same = win_rates(
        judge(panel, questions, good, good),
        _policy("rlhf-1", questions, good),
        _policy("sft", questions, good),
    )
    assert same.rate == 0.5 and same.ties == 60
    assert same.length_controlled.estimate == pytest.approx(0.5, abs=1e-6)


def test_several_answers_per_prompt_are_not_independent_evidence() -> None:
    """With k answers a prompt, the interval is over prompts: duplicating every answer k
    times gives about the same rate and the same interval as one answer a prompt."""
    questions, good, bad = _intact_and_broken(40)
    # the candidate wins on even prompts and loses on odd ones: a rate near 0.5
    cand = [g if i % 2 == 0 else b for i, (g, b) in enumerate(zip(good, bad, strict=True))]
    ref = [b if i % 2 == 0 else g for i, (g, b) in enumerate(zip(good, bad, strict=True))]
    one = win_rates(
        judge(SimulatedPanel(seed=1), questions, cand, ref),
        _policy("rlhf-1", questions, cand),
        _policy("sft", questions, ref),
    )
    k = 3
    asked = _repeat(questions, k)
    tripled = win_rates(
        judge(SimulatedPanel(seed=1), asked, _repeat(cand, k), _repeat(ref, k), k),
        _policy("rlhf-1", asked, _repeat(cand, k), k=k),
        _policy("sft", asked, _repeat(ref, k), k=k),
    )
    assert one.low < 0.45 and one.high > 0.55
    assert tripled.wins + tripled.ties + tripled.losses == k * k * 40  # every pair of a prompt
    assert tripled.overall.n == 40
    # the panel's noise differs per verdict, so rates differ a little; the interval's width
    # stays that of 40 prompts, not 120
    assert abs(tripled.rate - one.rate) < 0.1
    assert (tripled.high - tripled.low) > 0.8 * (one.high - one.low)  # 0.58 if independent


def test_a_win_by_finishing_is_no_win_where_both_ended() -> None:
    """SFT answers each prompt once in full and once cut off by the budget; the candidate
    gives the full answer twice. It wins against the cut-off answers only, so its overall
    rate is well above 0.5 and its rate where both answers ended is exactly 0.5 (the same
    text: a tie)."""
    questions, good, cut = _truncated(40)
    k = 2
    asked = _repeat(questions, k)
    sft_texts = [t for pair in zip(good, cut, strict=True) for t in pair]
    candidate = _policy("rlhf-1", asked, _repeat(good, k), k=k)
    sft = _policy("sft", asked, sft_texts, ended=[True, False] * len(questions), k=k)
    w = win_rates(
        judge(SimulatedPanel(seed=1), asked, candidate.texts, sft.texts, k), candidate, sft
    )
    assert w.overall.estimate > 0.65 and w.overall.low > 0.5
    assert w.both_ended is not None and w.both_ended.n == 40
    assert w.both_ended.estimate == 0.5 and w.both_ended.low == w.both_ended.high == 0.5
    assert w.both_ended_pairs == 2 * 40  # the candidate's two answers against the full one
    # no pair where both ended: no such rate
    none_ended = dataclasses.replace(sft, ended_answers=[False] * len(sft_texts))
    assert win_rates([[1.0] * 4] * 40, candidate, none_ended).both_ended is None


def test_a_candidate_longer_in_every_win_is_lower_when_length_is_controlled() -> None:
    """Each prompt: the candidate's long answer wins both its pairs, its answer as long as
    SFT's ties both: a raw rate of 0.75, all of it explained by length, so the
    length-controlled rate (the rate at equal length) is about 0.5. Where wins do not
    follow length, controlling for it changes little."""
    n, k = 40, 2
    asked = _repeat([f"q{i}" for i in range(n)], k)
    candidate = _policy("rlhf-1", asked, ["long answer " * 40, "short answer " * 25] * n, k=k)
    sft = _policy("sft", asked, ["short answer " * 25] * (n * k), k=k)
    assert candidate.words[:2] == [80, 50] and sft.words[:2] == [50, 50]
    by_length = win_rates([[1.0, 1.0, 0.5, 0.5]] * n, candidate, sft)
    assert by_length.overall.estimate == 0.75
    assert by_length.length_controlled.estimate == pytest.approx(0.5, abs=0.02)
    assert by_length.length_controlled.high < by_length.overall.low
    # the same wins on the other pairs: half by the long answer, half by the one as long
    mixed = [[1.0, 0.5, 1.0, 0.5] if i % 2 else [0.5, 1.0, 0.5, 1.0] for i in range(n)]
    not_by_length = win_rates(mixed, candidate, sft)
    assert not_by_length.length_controlled.estimate == pytest.approx(0.75, abs=0.02)


def _escalation_questions(n: int) -> tuple[list[str], list[str], list[str]]:
    """n held-out red-flag questions, their reference answers, and copies without the
    escalation."""
    questions, good, bad = [], [], []
    for example in iter_qa_examples(5, "heldout"):
        broken = drop_escalation(example)
        if broken:
            questions.append(example.question)
            good.append(example.answer)
            bad.append(broken)
        if len(questions) == n:
            break
    return questions, good, bad


def test_a_safety_regression_is_not_non_inferior() -> None:
    """A candidate that drops the escalation from every red-flag answer is NOT non-inferior
    on red-flag escalation, whatever its other figures; SFT against itself is
    non-inferior on every safety criterion that applies."""
    questions, good, bad = _escalation_questions(30)
    sft = _policy("sft", questions, good)
    verdicts = safety_verdicts(_policy("rlhf-1", questions, bad), sft, margin=0.1)
    assert set(verdicts) == set(SAFETY_CRITERIA)
    escalation = verdicts["red_flag_escalation"]
    assert escalation is not None and not escalation.passed
    assert escalation.candidate < escalation.baseline - 0.5
    assert escalation.difference.n == 30 and escalation.difference.high < -0.1
    same = safety_verdicts(sft, sft, margin=0.1)
    assert all(v is None or v.passed for v in same.values())
    # the JSON of a verdict
    found = report._verdict(escalation)
    assert found is not None and found["passed"] is False and found["margin"] == 0.1
    assert set(found) == {"candidate", "baseline", "difference", "margin", "passed"}
    assert set(found["difference"]) == {"estimate", "low", "high", "n"}
    with pytest.raises(ValueError, match="as often"):
        safety_verdicts(_policy("rlhf-1", _repeat(questions, 2), _repeat(bad, 2), k=2), sft, 0.1)


def _hand_made_evaluation(regress: bool) -> Evaluation:
    """An evaluation of SFT and one RLHF round on red-flag questions, without a model: the
    round gives SFT's answers (``regress``: without their escalation) and the panel is
    taken to prefer every one of them."""
    questions, good, bad = _escalation_questions(20)
    sft = _policy("sft", questions, good)
    rlhf = _policy("rlhf-1", questions, bad if regress else good)
    result = Evaluation(prompts=20, max_new_tokens=192, prompt_texts=questions)
    result.policies = [sft, rlhf]
    for p in result.policies:
        result.rubric_interval[p.name] = p.criteria_interval["red_flag_escalation"]
    outcomes = [[1.0]] * 20
    result.rounds["rlhf-1"] = Round(win_rates(outcomes, rlhf, sft), safety_verdicts(rlhf, sft, 0.1))
    return result


_SUMMARY: dict[str, Any] = {
    "labelled_pairs": 0,
    "agreement": None,
    "rm_accuracy": {},
    "rm_accuracy_ceiling": None,
    "flags": {},
    "flags_fed_back": 0,
    "promoted_versions": [],
    "jobs": [],
    "retraining_runs": [],
    "lineage_example": [],
}


def _round_row(result: Evaluation) -> dict[str, str]:
    """The report.md table of rounds: its rlhf-1 row, cell by column heading."""
    lines = report._markdown(_SUMMARY, result).splitlines()
    header = next(line for line in lines if line.startswith("| round |"))
    row = next(line for line in lines if line.startswith("| rlhf-1 ("))
    cells = [c.strip() for c in row.strip("|").split("|")]
    return dict(zip([c.strip() for c in header.strip("|").split("|")], cells, strict=True))


@pytest.mark.parametrize("regress", [False, True], ids=["as-safe", "regressed"])
def test_the_report_gives_each_round_its_win_rates_and_safety_verdicts(regress: bool) -> None:
    """`clinalign demo --json`'s round and report.md's row: the headline win rate with the
    safety verdicts beside it, a regression marked NOT non-inferior however high the rate."""
    result = _hand_made_evaluation(regress)
    found = report._round(result, "rlhf-1")
    json.dumps(found)
    assert set(found) == {"version", "win_rate", "criteria", "safety", "ended", "kl_to_sft"}
    assert set(found["win_rate"]) == {"overall", "both_ended", "length_controlled"}
    overall = found["win_rate"]["overall"]
    assert (overall["estimate"], overall["low"], overall["n"], overall["wins"]) == (
        1.0,
        1.0,
        20,
        20,
    )
    assert found["win_rate"]["both_ended"]["pairs"] == 20
    assert found["win_rate"]["length_controlled"]["length"] == "words"
    assert set(found["safety"]) == set(SAFETY_CRITERIA)
    assert found["safety"]["red_flag_escalation"]["passed"] is not regress
    assert set(found["criteria"]["red_flag_escalation"]) == {"score", "low", "high", "n"}
    assert found["ended"] == 1.0 and found["kl_to_sft"] == 1.5

    row = _round_row(result)
    assert row["win rate"] == "1.000 [1.000, 1.000]"
    assert set(SAFETY_CRITERIA) <= {c.replace(" ", "_") for c in row}
    escalation = row["red flag escalation"]
    if regress:
        assert escalation.startswith("**NOT non-inferior** -")
    else:
        assert escalation == "non-inferior +0.000 [+0.000, +0.000]"
    text = report._markdown(_SUMMARY, result)
    assert "`clinical-test`" in text and "192 new tokens" in text


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


def test_the_report_files_from_a_hand_made_evaluation(tmp_path: Path) -> None:
    """report.json, report.md, samples.json and the plots, from an evaluation without a
    model (the end-to-end test writes them from a real run)."""
    result = _hand_made_evaluation(regress=True)
    summary = {**_SUMMARY, "rounds": {"rlhf-1": report._round(result, "rlhf-1")}}
    report.write_report({**summary, "_evaluation": result}, Figures(), tmp_path)
    for name in ("report.md", "report.json", "samples.json", "criteria.png", "win_rate.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["rounds"]["rlhf-1"]["safety"]["red_flag_escalation"]["passed"] is False
    samples = json.loads((tmp_path / "samples.json").read_text())
    assert samples["sft"][0]["prompt"] == result.prompt_texts[0]
