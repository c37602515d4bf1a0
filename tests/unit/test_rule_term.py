"""PPO's clinical rule term (issue 20): a verifiable reward beside the reward model's."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from clinalign.common.errors import InvalidArgument
from clinalign.trainer.jobs.ppo_job import with_rule_term
from clinalign.trainer.methods.ppo.config import PPOHyperparameters

QUESTION = "What dose of ibuprofen can I take?"


def _half(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    return [0.5] * len(responses)


def test_the_rule_term_costs_a_violation_its_weight_and_is_off_at_zero() -> None:
    answers = ["Take 1000 mg.", "Take 200 mg up to three times a day with food."]
    assert with_rule_term(_half, 0.0) is _half
    # 1000 mg is two and a half times ibuprofen's single-dose maximum: a critical violation
    assert with_rule_term(_half, 1.0)([QUESTION] * 2, answers) == [-0.5, 0.5]
    assert with_rule_term(_half, 2.0)([QUESTION] * 2, answers) == [-1.5, 0.5]


def test_a_negative_rule_penalty_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgument) as err:
        PPOHyperparameters(rule_penalty=-1.0).validate()
    assert err.value.field == "rule_penalty"
