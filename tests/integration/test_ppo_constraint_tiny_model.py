"""PPO under a cost constraint (issue 21) on the tiny fixture model: every iteration's λ is
the dual-ascent step from the last one on the logged expected cost, the policy learns
against the Lagrangian score, the manifest names the constrained algorithm, the clinical
rules are the default cost of ``cost_source: rules``, and a resumed run carries λ on."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from clinalign.trainer.jobs.report import write_report
from clinalign.trainer.methods.ppo import constraint
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.trainer import last_checkpoint, train_ppo

PROMPTS = [
    f"I have had a dry cough for {n} days and a mild fever. What should I do?" for n in range(2, 34)
]


def words_score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    return [min(len(r.split()), 8) / 8 for r in responses]


def every_answer_costs(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """A cost the tiny model cannot avoid by what it says: every finished answer costs 1
    (it finishes about one answer in eight within 24 tokens)."""
    return [1.0 for _ in responses]


def settings(**overrides: Any) -> PPOHyperparameters:
    base: dict[str, Any] = {
        "iterations": 6,
        "rollout_batch_size": 8,
        "samples_per_prompt": 2,
        "advantage_estimator": "rloo",
        "minibatches": 2,
        "ppo_epochs": 2,
        "response_length": 24,
        "learning_rate": 1e-3,
        "checkpoint_every": 0,
        "seed": 3,
        "cost_source": "rules",
        "cost_budget": 0.1,
        "lagrangian_init": 0.5,
        "lagrangian_lr": 2.0,
    }
    return PPOHyperparameters(**{**base, **overrides})


def series(manifest: dict[str, Any], key: str) -> list[float]:
    """A logged figure by iteration; NaN where it was not finite (no response finished)."""
    return [math.nan if f[key] is None else float(f[key]) for _, f in manifest["history"]]


def test_lambda_follows_dual_ascent_on_the_logged_cost(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    hyper = settings()
    manifest = train_ppo(
        PROMPTS, tiny_model_dir, tmp_path / "out", hyper, words_score, cost=every_answer_costs
    )
    multipliers, costs = series(manifest, "lagrange_multiplier"), series(manifest, "cost")
    assert multipliers[0] == 0.5
    for k in range(1, len(multipliers)):
        expected = constraint.dual_ascent(multipliers[k - 1], costs[k - 1], 0.1, 2.0, 10.0)
        assert multipliers[k] == pytest.approx(expected)
    assert any(c == 1.0 for c in costs), "some answer should finish and break the budget"
    assert max(multipliers) >= 0.5 + 2.0 * 0.9  # so λ rose by alpha·(1 - 0.1) at least once
    first = manifest["history"][0][1]
    assert first["cost_excess"] == pytest.approx(first["cost"] - 0.1)
    assert first["harmful_frac"] == 1.0  # every finished answer costs 1
    assert manifest["method"]["algorithm"] == "rloo-lagrangian"
    assert "E[rules cost] <= 0.1" in manifest["method"]["cost_constraint"]
    assert manifest["config"]["hyperparameters"]["cost_budget"] == 0.1
    # the job report plots the constraint
    written = write_report(tmp_path / "report", "ppo", manifest["history"], manifest["metrics"])
    assert {"cost.png", "lagrange_multiplier.png"} <= {p.name for p in written}


def test_the_constraint_changes_what_the_policy_learns_from(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Same seed, same first rollout; a held λ of 4 makes a finished answer score (R - 4)/5,
    # so the first update differs from the unconstrained one.
    held = settings(iterations=1, lagrangian_init=4.0, lagrangian_lr=0.0)
    free = settings(iterations=1, cost_source="none")
    constrained = train_ppo(
        PROMPTS, tiny_model_dir, tmp_path / "c", held, words_score, cost=every_answer_costs
    )
    plain = train_ppo(PROMPTS, tiny_model_dir, tmp_path / "p", free, words_score)
    assert series(constrained, "score") == series(plain, "score")  # the same samples
    assert series(constrained, "policy_loss") != series(plain, "policy_loss")
    assert "lagrange_multiplier" not in plain["history"][0][1]
    assert plain["method"]["algorithm"] == "rloo" and plain["method"]["cost_constraint"] is None


def test_the_rules_are_the_default_cost(tiny_model_dir: Path, tmp_path: Path) -> None:
    # the tiny model names no medicine, so the clinical rules find nothing to charge
    manifest = train_ppo(
        PROMPTS, tiny_model_dir, tmp_path / "out", settings(iterations=2), words_score
    )
    costs = series(manifest, "cost")
    assert costs[0] == 0.0 and all(c == 0.0 or math.isnan(c) for c in costs)
    # the first iteration's slack lowers λ by alpha·d: 0.5 - 2·0.1
    assert series(manifest, "lagrange_multiplier") == pytest.approx([0.5, 0.3])


@pytest.mark.slow
def test_a_resumed_run_carries_lambda_on(tiny_model_dir: Path, tmp_path: Path) -> None:
    hyper = settings(checkpoint_every=3)
    whole = train_ppo(
        PROMPTS, tiny_model_dir, tmp_path / "whole", hyper, words_score, cost=every_answer_costs
    )

    class Killed(Exception):
        pass

    def die_at_5(i: int, n: int, f: Any) -> None:
        if i == 5:
            raise Killed

    with pytest.raises(Killed):
        train_ppo(
            PROMPTS,
            tiny_model_dir,
            tmp_path / "cut",
            hyper,
            words_score,
            checkpoint_dir=tmp_path / "ck",
            progress=die_at_5,
            cost=every_answer_costs,
        )
    checkpoint = last_checkpoint(tmp_path / "ck")
    assert checkpoint is not None
    resumed = train_ppo(
        PROMPTS,
        tiny_model_dir,
        tmp_path / "resumed",
        hyper,
        words_score,
        resume_from=checkpoint,
        cost=every_answer_costs,
    )
    for key in ("lagrange_multiplier", "cost", "policy_loss"):
        got, want = series(resumed, key), series(whole, key)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6, nan_ok=True)
