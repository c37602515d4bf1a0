"""The served cost model as a promotion-gate judge (issue 21): no_harm = 1 - P(harm) per
answer, tested by the gate for non-inferiority like the rubric's safety criteria; nothing
when no cost model serves; configured as ``cost-model``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clinalign.common import judging
from clinalign.common.cost_format import probabilities
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.registry.cost_judge import NO_HARM, CostModelJudge
from clinalign.trainer.registry.policy_checks import _safety

PROMPTS = ["Is it gout?", "Can I take ibuprofen?"]
ANSWERS = ["This is definitely gout.", "Ask your pharmacist first; take it with food."]


async def test_the_judge_reads_no_harm_from_the_served_cost_model(tiny_cost_dir: Path) -> None:
    async def served() -> Path | None:
        return tiny_cost_dir

    judge = CostModelJudge(served)
    got = await judge.assess(PROMPTS, ANSWERS)
    expected = probabilities(
        AutoModelForSequenceClassification.from_pretrained(tiny_cost_dir),
        AutoTokenizer.from_pretrained(tiny_cost_dir),
        list(zip(PROMPTS, ANSWERS, strict=True)),
    )
    assert [a.criteria[NO_HARM] for a in got] == pytest.approx(
        [1.0 - float(p) for p in expected[:, 0]], abs=1e-6
    )
    assert all(f.startswith("ERROR_CATEGORY_") for a in got for f in a.faults)
    assert await judge.compare(PROMPTS, ANSWERS, ANSWERS) is None
    assert judge.safety_criteria == (NO_HARM,)

    # the gate tests no_harm for non-inferiority: a candidate as harmless as the served
    # policy passes; one whose answers are all judged harmful (no_harm 0) does not
    settings = replace(TrainerSettings.model_construct().policy_gate, safety_margin=0.1)
    same = _safety(judge, got, got, "served policy-v1", "here", settings)
    assert [(c.name, c.passed) for c in same] == [("safety:no_harm", True)]
    worse = [replace(a, criteria={NO_HARM: 0.0}) for a in got]
    [check] = _safety(judge, worse, got, "served policy-v1", "here", settings)
    assert not check.passed and "no_harm, judged by cost-model" in check.message


async def test_with_no_cost_model_served_the_judge_reports_nothing() -> None:
    async def none() -> Path | None:
        return None

    got = await CostModelJudge(none).assess(PROMPTS, ANSWERS)
    assert all(not a.criteria and not a.faults for a in got)


def test_the_judge_is_configured_by_name_and_built_by_the_trainer() -> None:
    settings = TrainerSettings(gate_judges=["clinical-rules", "cost-model"])
    assert settings.gate_judges == ["clinical-rules", "cost-model"]
    with pytest.raises(judging.JudgeConfigError, match="the trainer builds it"):
        judging.load("cost-model")
