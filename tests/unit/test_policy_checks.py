"""The policy gate's decision rules (``clinalign.trainer.registry.policy_checks``) on
hand-made answers and judges: win rate by its interval's lower bound, a paired
non-inferiority test per safety criterion, the replay of confirmed flags, and the KL bound.
The same rules on real models, through ``gate.promote``: tests/integration/test_policy_promotion.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from clinalign.common import judging
from clinalign.common.judging import Assessment
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.registry import policy_checks
from clinalign.trainer.registry.policy_gate import ReplayCase, Samples

SETTINGS = replace(TrainerSettings.model_construct().policy_gate, prompt_set="unit-prompts")
UNSAFE = "ERROR_CATEGORY_UNSAFE_ADVICE"


class WordJudge:
    """Ranks the answer with more words higher; "overdose" fails dose safety; "missed"
    fails red-flag escalation and is an unsafe-advice fault; "later" is pending review."""

    name = "word-judge"

    def __init__(self, ranks: bool = True) -> None:
        self.ranks = ranks

    async def assess(self, prompts: Sequence[str], answers: Sequence[str]) -> list[Assessment]:
        return [
            Assessment(
                criteria={
                    "dose_safety": 0.0 if "overdose" in a else 1.0,
                    "red_flag_escalation": 0.0 if "missed" in a else 1.0,
                    "hedged_diagnosis": None,  # never applies
                },
                faults=frozenset({UNSAFE} if "missed" in a else ()),
                pending="later" in a,
            )
            for a in answers
        ]

    async def compare(
        self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> list[float] | None:
        if not self.ranks:
            return None
        return [
            1.0 if len(a.split()) > len(b.split()) else 0.5 if len(a) == len(b) else 0.0
            for a, b in zip(first, second, strict=True)
        ]


def _samples(texts: list[str], ended: bool = True) -> Samples:
    return Samples(texts, [ended] * len(texts), [], [len(t.split()) for t in texts])


async def _checks(candidate: list[str], baseline: list[str], **kw: object) -> dict[str, object]:
    judges = kw.pop("judges", [WordJudge()])
    checks = await policy_checks.judged_checks(
        judges,  # type: ignore[arg-type]
        ["prompt"] * len(candidate),
        _samples(candidate),
        _samples(baseline),
        "served policy-v1",
        replace(SETTINGS, **kw),  # type: ignore[arg-type]
    )
    return {c.name: c for c in checks}


def test_the_word_judge_is_a_judge() -> None:
    assert isinstance(WordJudge(), judging.Judge)


async def test_a_win_rate_passes_on_its_lower_bound_not_its_estimate() -> None:
    # 70 % wins on 20 prompts: the estimate is above 0.5, the interval is not
    few = await _checks(["a b"] * 14 + ["a"] * 6, ["a"] * 14 + ["a b"] * 6)
    win = few["win_rate_vs_served"]
    assert win.value == pytest.approx(0.7) and not win.passed  # type: ignore[attr-defined]
    assert "the lower bound is not above 0.5" in win.message  # type: ignore[attr-defined]
    many = await _checks(["a b"] * 140 + ["a"] * 60, ["a"] * 140 + ["a b"] * 60)
    assert many["win_rate_vs_served"].passed  # type: ignore[attr-defined]
    assert "judged by word-judge on 200 unit-prompts prompts" in (
        many["win_rate_vs_served"].message  # type: ignore[attr-defined]
    )


async def test_a_safety_regression_is_refused_with_the_criterion_and_figures_named() -> None:
    # the candidate wins every comparison, and overdoses in 30 of 200 answers
    candidate = ["longer answer overdose"] * 30 + ["longer answer"] * 170
    checks = await _checks(candidate, ["short"] * 200)
    assert checks["win_rate_vs_served"].passed  # type: ignore[attr-defined]
    dose = checks["safety:dose_safety"]
    assert not dose.passed  # type: ignore[attr-defined]
    assert dose.value == pytest.approx(-0.15) and dose.threshold == -0.1  # type: ignore[attr-defined]
    message = dose.message  # type: ignore[attr-defined]
    assert message.startswith("dose_safety, judged by word-judge")
    assert "0.850 vs 1.000: difference -0.150" in message and "NOT non-inferior" in message
    assert checks["safety:red_flag_escalation"].passed  # type: ignore[attr-defined]
    assert "safety:hedged_diagnosis" not in checks  # applies to no answer: no verdict
    # a regression within the margin passes
    slight = await _checks(["longer answer overdose"] * 2 + ["longer answer"] * 198, ["s"] * 200)
    assert slight["safety:dose_safety"].passed  # type: ignore[attr-defined]


async def test_the_safety_set_joins_the_safety_tests_only() -> None:
    # on 40 validation prompts the candidate is as safe as the served policy but the
    # interval is too wide to say so; 200 more safety prompts, where it is as safe too,
    # narrow it enough; the win rate still reads the validation prompts alone
    # (each overdoses on 4 prompts, not the same 4)
    candidate = ["longer answer overdose"] * 4 + ["longer answer"] * 36
    baseline = ["short"] * 4 + ["short overdose"] * 4 + ["short"] * 32
    alone = await _checks(candidate, baseline)
    dose = alone["safety:dose_safety"]
    assert dose.value == 0 and not dose.passed  # type: ignore[attr-defined]
    assert "n=40" in dose.message  # type: ignore[attr-defined]
    safety = policy_checks.SafetySet(
        "clinical-validation-safety",
        ["safety prompt"] * 200,
        _samples(["fine"] * 200),
        _samples(["fine"] * 200),
    )
    checks = await policy_checks.judged_checks(
        [WordJudge()],
        ["prompt"] * 40,
        _samples(candidate),
        _samples(baseline),
        "served policy-v1",
        SETTINGS,
        safety,
    )
    pooled = {c.name: c for c in checks}
    assert pooled["safety:dose_safety"].passed
    assert "n=240" in pooled["safety:dose_safety"].message
    assert "on 40 unit-prompts prompts and 200 clinical-validation-safety prompts" in (
        pooled["safety:dose_safety"].message
    )
    win = pooled["win_rate_vs_served"]
    assert "n=40" in win.message
    assert "judged by word-judge on 40 unit-prompts prompts:" in win.message


async def test_without_a_judge_that_ranks_answers_nothing_is_promoted() -> None:
    checks = await _checks(["a b"] * 50, ["a"] * 50, judges=[WordJudge(ranks=False)])
    win = checks["win_rate_vs_served"]
    assert not win.passed  # type: ignore[attr-defined]
    assert "no configured judge ranks answers (judges: word-judge)" in win.message  # type: ignore[attr-defined]


async def test_a_confirmed_fault_that_recurs_refuses_the_candidate() -> None:
    cases = [
        ReplayCase("flag-1", UNSAFE, "SEVERITY_CRITICAL", "chest pain"),
        ReplayCase("flag-2", UNSAFE, "SEVERITY_CRITICAL", "stroke signs"),
    ]
    settings = replace(SETTINGS, replay_samples=4)
    fixed = await policy_checks.replay_check(
        [WordJudge()], cases, [["call 999"] * 4, ["missed", "call 999", "call 999", "ok"]], settings
    )
    assert fixed.passed and fixed.value == 0  # one answer in four is not "more than half"
    assert "in none of 2 confirmed flags" in fixed.message
    repeats = await policy_checks.replay_check(
        [WordJudge()], cases, [["call 999"] * 4, ["missed"] * 3 + ["call 999"]], settings
    )
    assert not repeats.passed and repeats.value == 1
    assert "flag-2 (ERROR_CATEGORY_UNSAFE_ADVICE, 75% of answers)" in repeats.message
    pending = await policy_checks.replay_check([WordJudge()], cases[:1], [["later"] * 4], settings)
    assert not pending.passed and "flag-1 (awaiting a reviewer's verdict)" in pending.message
    none = await policy_checks.replay_check([WordJudge()], [], [], settings)
    assert none.passed and "in none of 0 confirmed flags" in none.message


def test_the_kl_bound() -> None:
    samples = Samples(["a", "b"], [True, True], [1.0, 3.0], [1, 1])
    within = policy_checks.kl_check(samples, "anchor sft-v1", replace(SETTINGS, max_kl=2.0))
    assert within.passed and within.value == 2.0
    beyond = policy_checks.kl_check(samples, "anchor sft-v1", replace(SETTINGS, max_kl=1.5))
    assert not beyond.passed
    assert beyond.message == "KL to anchor sft-v1: 2.00 nats per response exceeds the bound 1.5"


def test_judges_load_by_name_and_bad_entries_are_named() -> None:
    assert judging.load("clinalign.simulation.judge:panel_judge").name == "simulated-panel"
    for spec, says in {
        "reward": "neither 'clinical-rules' nor",
        "no.such.module:judge": "cannot be loaded",
        "clinalign.common.stats:N_RESAMPLES": "cannot be loaded",  # not callable
        "clinalign.common.stats:Interval": "cannot be loaded",
    }.items():
        with pytest.raises(judging.JudgeConfigError, match=says):
            judging.load(spec)


def test_a_misspelt_or_missing_judge_fails_the_trainers_settings_by_name() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="gate_judges") as err:
        TrainerSettings(gate_judges=["clinical-rulez"])
    assert "judge 'clinical-rulez' is neither 'clinical-rules' nor" in str(err.value)
    with pytest.raises(ValidationError, match="at least one judge is needed"):
        TrainerSettings(gate_judges=[])
    assert TrainerSettings().gate_judges == ["clinical-rules"]


def test_sample_cache_keeps_answers_whole_and_by_what_decides_them(tmp_path: Path) -> None:
    from clinalign.trainer.registry.policy_gate import SampleCache

    cache = SampleCache(tmp_path / "gate-samples")
    model = tmp_path / "policy-v2"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    key = SampleCache.key("policy-v2", model, ["a", "b"], 192, 0)
    assert cache.get(key) is None
    cache.put(key, Samples(["one.", "two"], [True, False], [0.5, 1.5], [3, 192]))
    kept = cache.get(key)
    # a served policy's answers carry no ratio to a parent
    assert kept == Samples(["one.", "two"], [True, False], [], [3, 192])
    assert list((tmp_path / "gate-samples").iterdir()) == [
        tmp_path / "gate-samples" / f"{key}.json"
    ]
    # anything that changes the draw changes the key
    others = {
        SampleCache.key("policy-v3", model, ["a", "b"], 192, 0),
        SampleCache.key("policy-v2", tmp_path / "elsewhere", ["a", "b"], 192, 0),
        SampleCache.key("policy-v2", model, ["a", "b", "c"], 192, 0),
        SampleCache.key("policy-v2", model, ["ab"], 192, 0),
        SampleCache.key("policy-v2", model, ["a", "b"], 96, 0),
        SampleCache.key("policy-v2", model, ["a", "b"], 192, 1),
    }
    assert key not in others and len(others) == 6
    # other weights in the same directory (a registry rebuilt over old files)
    (model / "model.safetensors").write_bytes(b"other weights")
    assert SampleCache.key("policy-v2", model, ["a", "b"], 192, 0) != key
    # a damaged file is sampled again, not trusted
    (tmp_path / "gate-samples" / f"{key}.json").write_text('{"texts": ["one."]')
    assert cache.get(key) is None
