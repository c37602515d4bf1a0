"""The policy half of the promotion gate (``gate.promote`` on policy versions), transport-
free: real models sampled on held-out prompts, a real registry on SQLite, and a scorer
passed in where the trainer passes the reward service's. The reward service's path is
exercised end to end in ``test_ppo_job``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from clinalign.common import artefacts
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.registry import gate
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.registry.policy_gate import bootstrap_interval, win_rate

SETTINGS = replace(TrainerSettings.model_construct().policy_gate, prompts=8, max_new_tokens=24)


def _ppo_candidate(tiny_model_dir: Path, out: Path) -> Path:
    """A policy PPO taught to end its answers (the tiny base model rarely does)."""
    from clinalign.trainer.methods.ppo.config import PPOHyperparameters
    from clinalign.trainer.methods.ppo.trainer import train_ppo

    prompts = [f"I have had a sore throat for {n} days. What should I do?" for n in range(2, 26)]
    hyper = PPOHyperparameters(
        iterations=25,
        rollout_batch_size=8,
        minibatches=2,
        ppo_epochs=2,
        response_length=24,
        learning_rate=1e-3,
        critic="value_head",
        checkpoint_every=0,
        seed=3,
    )
    train_ppo(prompts, tiny_model_dir, out, hyper, lambda p, r: [1.0 for _ in r])
    return out


@pytest.mark.slow
async def test_policy_gate_decisions(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'trainer.db'}", registry.Base)
    reg = registry.Registry(tmp_path / "registry")
    judged: list[str] = []

    async def by_length(prompts: list[str], responses: list[str]) -> tuple[list[float], str]:
        judged.extend(responses)
        return [min(len(r.split()), 8) / 8 for r in responses], "reward-v1"

    candidate_dir = _ppo_candidate(tiny_model_dir, tmp_path / "ppo")
    reg.root.mkdir()
    try:
        db.create_schema()
        served = await db.run_write(
            lambda s: reg.register(s, tiny_model_dir, artefacts.POLICY, serve_if_none=True).version
        )
        same = await db.run_write(
            lambda s: (
                reg.register(s, tiny_model_dir, artefacts.POLICY, parent_version=served).version
            )
        )
        trained = await db.run_write(
            lambda s: (
                reg.register(s, candidate_dir, artefacts.POLICY, parent_version=served).version
            )
        )
        orphan = await db.run_write(
            lambda s: reg.register(s, candidate_dir, artefacts.POLICY).version
        )
        # identical weights, the same seed: identical samples, every prompt a tie
        tie = await gate.promote(db, reg, same, None, score=by_length, policy_settings=SETTINGS)
        # a tight KL bound refuses a policy that moved away from its parent ...
        tight = replace(SETTINGS, max_kl=1e-3)
        far = await gate.promote(db, reg, trained, None, score=by_length, policy_settings=tight)
        # ... and the default one lets it through
        better = await gate.promote(
            db, reg, trained, None, score=by_length, policy_settings=SETTINGS
        )
        with pytest.raises(FailedPrecondition, match="no reward service"):
            await gate.promote(db, reg, same, None, policy_settings=SETTINGS)
        # no parent: judged against the served policy (now the trained one), no KL check
        no_parent = await gate.promote(
            db, reg, orphan, None, score=by_length, policy_settings=SETTINGS
        )
        stages = await db.run_sync(
            lambda s: {v.version: v.stage for v in reg.list(s, artefacts.POLICY, 10, 0)}
        )
        decisions = await db.run_sync(lambda s: reg.decisions(s, trained))
    finally:
        db.dispose()

    assert (served, same, trained, orphan) == ("policy-v1", "policy-v2", "policy-v3", "policy-v4")
    assert judged  # the judge saw responses that ended
    assert not tie.promoted
    checks = {c.name: c for c in tie.checks}
    assert set(checks) == {"reward_vs_served", "win_rate_vs_served", "kl_to_parent"}
    assert checks["win_rate_vs_served"].value == 0.5 and not checks["win_rate_vs_served"].passed
    assert "against served policy-v1 is not above 0.5 on 8 clinical-heldout prompts" in (
        checks["win_rate_vs_served"].message
    )
    assert checks["reward_vs_served"].passed  # equal is not below
    assert checks["kl_to_parent"].value == pytest.approx(0.0, abs=1e-5)
    assert checks["kl_to_parent"].passed

    assert not far.promoted
    far_checks = {c.name: c for c in far.checks}
    assert far_checks["win_rate_vs_served"].passed and far_checks["reward_vs_served"].passed
    kl = far_checks["kl_to_parent"]
    assert not kl.passed and kl.value > 1e-3 and kl.threshold == 1e-3
    assert kl.message.startswith("KL to parent policy-v1: ") and "exceeds the bound" in kl.message

    assert better.promoted and all(c.passed for c in better.checks)
    assert {c.name: c.value for c in better.checks}["win_rate_vs_served"] > 0.5
    assert "judged by reward-v1" in better.checks[1].message
    assert [d.promoted for d in decisions] == [False, True]  # both decisions are on record

    assert [c.name for c in no_parent.checks] == ["reward_vs_served", "win_rate_vs_served"]
    assert not no_parent.promoted  # the same weights as the served policy: a tie
    assert stages == {
        "policy-v1": "retired",
        "policy-v2": "rejected",
        "policy-v3": "serving",
        "policy-v4": "rejected",
    }


def test_win_rate_and_its_interval() -> None:
    assert win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 1.0, 1.0]) == pytest.approx(0.625)
    low, high = bootstrap_interval([1.0] * 30 + [0.0] * 10, [0.5] * 40, seed=1)
    assert low < 0.75 < high and low > 0.5
    assert bootstrap_interval([1.0] * 5, [0.0] * 5) == (1.0, 1.0)


def test_demo_evaluation_answers_once_for_a_rubric_only_policy(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The demo's held-out evaluation on real (tiny) models: policies named in ``once`` answer
    each prompt once and get no win rate; the others answer k times, and SFT, the reference
    of every win rate, may not answer once."""
    from clinalign.demo.evaluation import evaluate

    prompts = ["I have a sore throat. What should I do?", "How much paracetamol can I take?"]
    policies = [
        ("foundation", "v0", tiny_model_dir),
        ("sft", "v1", tiny_model_dir),
        ("rlhf-1", "v2", tiny_model_dir),
    ]
    result = evaluate(
        policies, prompts, max_new_tokens=6, samples_per_prompt=2, once=("foundation",)
    )
    answers = {p.name: (p.samples_per_prompt, len(p.texts)) for p in result.policies}
    assert answers == {"foundation": (1, 2), "sft": (2, 4), "rlhf-1": (2, 4)}
    assert set(result.win_rate_vs_sft) == {"rlhf-1"}
    w = result.win_rate_vs_sft["rlhf-1"]
    assert w.wins + w.ties + w.losses == 2 * 2 * 2  # every pair of each prompt
    assert set(result.rubric_interval) == {"foundation", "sft", "rlhf-1"}
    with pytest.raises(ValueError, match="cannot answer once"):
        evaluate(policies, prompts, max_new_tokens=6, samples_per_prompt=2, once=("sft",))
