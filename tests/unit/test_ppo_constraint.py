"""The cost constraint of PPO (issue 21): the Lagrangian score, the expected cost and the
dual-ascent step of λ, by hand values; its settings; the clinical rules as a cost."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from clinalign.common.clinical_rules import rule_cost, rule_reward
from clinalign.common.errors import InvalidArgument
from clinalign.trainer.jobs.specs import parse_fields
from clinalign.trainer.methods.ppo import constraint
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.scoring import sequence_costs

QUESTION = "What dose of ibuprofen can I take?"


def test_the_lagrangian_score_mixes_reward_and_cost_for_the_finished_only() -> None:
    b_scores = torch.tensor([1.0, 0.5, -1.0, 2.0])
    b_costs = torch.tensor([0.0, 1.0, 0.0, 0.5])
    b_finished = torch.tensor([True, True, False, True])
    # λ = 1: (R - C)/2; the unfinished row keeps its penalty -1
    got = constraint.lagrangian_scores(b_scores, b_costs, b_finished, 1.0)
    assert got.tolist() == [0.5, -0.25, -1.0, 0.75]
    # λ = 3: (R - 3C)/4
    got = constraint.lagrangian_scores(b_scores, b_costs, b_finished, 3.0)
    assert got.tolist() == [0.25, -0.625, -1.0, 0.125]
    # λ = 0: the reward alone
    got = constraint.lagrangian_scores(b_scores, b_costs, b_finished, 0.0)
    assert got.tolist() == b_scores.tolist()


def test_the_lagrangian_score_refuses_a_negative_multiplier_and_mismatched_shapes() -> None:
    ones, finished = torch.ones(2), torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="non-negative"):
        constraint.lagrangian_scores(ones, ones, finished, -0.1)
    with pytest.raises(ValueError, match="same shape"):
        constraint.lagrangian_scores(ones, torch.ones(3), finished, 1.0)


def test_the_expected_cost_reads_the_finished_responses_only() -> None:
    b_costs = torch.tensor([0.5, 0.0, 1.0, 0.25])
    assert constraint.expected_cost(b_costs, torch.tensor([True, True, False, True])) == 0.25
    assert math.isnan(constraint.expected_cost(b_costs, torch.zeros(4, dtype=torch.bool)))


def test_dual_ascent_steps_lambda_by_the_excess_and_projects_it() -> None:
    # λ + alpha(Ĵ_C - d): 1 + 2·(0.30 - 0.05) = 1.5
    assert constraint.dual_ascent(1.0, 0.30, 0.05, 2.0, 10.0) == pytest.approx(1.5)
    # slack lowers λ, never below 0: 0.2 + 1·(0 - 0.5) → 0
    assert constraint.dual_ascent(0.2, 0.0, 0.5, 1.0, 10.0) == 0.0
    # and never above λ_max: 9.5 + 1·(1 - 0) → 10
    assert constraint.dual_ascent(9.5, 1.0, 0.0, 1.0, 10.0) == 10.0
    # alpha = 0 holds λ; a batch with nothing finished says nothing
    assert constraint.dual_ascent(1.0, 0.9, 0.0, 0.0, 10.0) == 1.0
    assert constraint.dual_ascent(1.0, math.nan, 0.0, 1.0, 10.0) == 1.0


def test_dual_ascent_finds_the_multiplier_that_meets_the_budget() -> None:
    # A toy policy whose expected cost falls as λ grows, C(λ) = 0.4/(1 + λ): the budget
    # 0.1 is met exactly at λ* = 3, where dual ascent must settle.
    multiplier = 0.0
    for _ in range(500):
        multiplier = constraint.dual_ascent(multiplier, 0.4 / (1 + multiplier), 0.1, 2.0, 10.0)
    assert multiplier == pytest.approx(3.0, abs=1e-6)


def test_the_constraint_figures_name_cost_excess_and_violations() -> None:
    figures = constraint.constraint_figures(
        b_mixed=torch.tensor([0.5, -0.5, -1.0]),
        b_costs=torch.tensor([0.0, 0.5, 0.25]),
        b_finished=torch.tensor([True, True, False]),
        budget=0.05,
    )
    assert figures == {
        "cost": 0.25,
        "cost_excess": pytest.approx(0.20),
        "harmful_frac": 0.5,  # 0.5 counts; the unfinished row's cost is not read
        "lagrangian_score": pytest.approx(-1 / 3),
    }


def test_sequence_costs_ask_about_the_finished_and_check_the_range() -> None:
    asked: list[str] = []

    def cost(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        asked.extend(responses)
        return [0.75 for _ in responses]

    finished = torch.tensor([True, False, True])
    got = sequence_costs(cost, ["q"] * 3, ["a", "b", "c"], finished)
    assert got.tolist() == [0.75, 0.0, 0.75] and asked == ["a", "c"]
    with pytest.raises(RuntimeError, match=r"outside \[0, 1\]"):
        sequence_costs(lambda p, r: [1.5] * len(r), ["q"] * 3, ["a", "b", "c"], finished)
    with pytest.raises(RuntimeError, match="returned 1 costs for 2"):
        sequence_costs(lambda p, r: [0.0], ["q"] * 3, ["a", "b", "c"], finished)


def test_the_rules_cost_is_the_rule_rewards_complement() -> None:
    # 1000 mg is two and a half times ibuprofen's single-dose maximum: critical, cost 1
    assert rule_cost(QUESTION, "Take 1000 mg.") == 1.0
    safe = "Take 200 mg up to three times a day with food."
    assert rule_cost(QUESTION, safe) == 0.0 == 1.0 - rule_reward(QUESTION, safe)


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"cost_source": "learned"}, "cost_source", "must be one of none, rules, model"),
        ({"cost_source": "rules", "cost_budget": 1.5}, "cost_budget", r"in \[0, 1\]"),
        ({"cost_source": "rules", "cost_budget": -0.1}, "cost_budget", r"in \[0, 1\]"),
        ({"cost_source": "rules", "lagrangian_init": -1.0}, "lagrangian_init", "negative"),
        ({"cost_source": "rules", "lagrangian_lr": -1.0}, "lagrangian_lr", "negative"),
        ({"cost_source": "rules", "lagrangian_max": 0.0}, "lagrangian_max", "positive"),
        (
            {"cost_source": "rules", "lagrangian_init": 20.0},
            "lagrangian_init",
            "must not exceed lagrangian_max",
        ),
        ({"cost_source": "rules", "rule_penalty": 1.0}, "rule_penalty", "already the constraint"),
    ],
)
def test_constraint_settings_out_of_range_are_refused_by_name(
    settings: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as err:
        PPOHyperparameters(**settings).validate()  # type: ignore[arg-type]
    assert err.value.field == field


def test_a_rule_term_beside_no_constraint_is_allowed() -> None:
    PPOHyperparameters(rule_penalty=1.0).validate()
    PPOHyperparameters(cost_source="rules", lagrangian_lr=0.0).validate()


def test_a_job_spec_sets_the_constraint_and_a_bad_one_names_its_key() -> None:
    parsed = parse_fields(
        {"cost_source": "rules", "cost_budget": "0.01", "lagrangian_lr": "0.5"},
        0,
        PPOHyperparameters,
    )
    assert parsed == {"cost_source": "rules", "cost_budget": 0.01, "lagrangian_lr": 0.5}
    with pytest.raises(InvalidArgument, match="must be one of none, rules, model") as err:
        parse_fields({"cost_source": "flags"}, 0, PPOHyperparameters)
    assert err.value.field == "spec.hyperparameters[cost_source]"
    with pytest.raises(InvalidArgument, match="already the constraint") as err:
        parse_fields({"cost_source": "rules", "rule_penalty": "1"}, 0, PPOHyperparameters)
    assert err.value.field == "spec.hyperparameters[rule_penalty]"


def test_a_retraining_round_inherits_the_cost_budget_of_its_base_policy(tmp_path: Path) -> None:
    """A cost_source=model run naming no budget takes the one its base was trained under
    (the loop continues the served policy; its cost stays within the first round's)."""
    from clinalign.common.artefacts import MANIFEST_NAME
    from clinalign.trainer.jobs.ppo_job import inherited_budget

    constrained = {"cost_source": "model", "cost_budget": 0.736}
    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps({"config": {"hyperparameters": {**constrained, "iterations": 20}}})
    )
    asked = {"cost_source": "model", "cost_budget": 0.02}  # the parsed default
    assert inherited_budget(tmp_path, asked, {"cost_source": "model"})["cost_budget"] == 0.736
    # a budget named in the spec wins; other sources, or an unconstrained base, inherit none
    assert inherited_budget(tmp_path, asked, {"cost_budget": "0.02"}) == asked
    rules = {"cost_source": "rules", "cost_budget": 0.02}
    assert inherited_budget(tmp_path, rules, {}) == rules
    plain = tmp_path / "plain"
    plain.mkdir()
    assert inherited_budget(plain, asked, {}) == asked  # no manifest
