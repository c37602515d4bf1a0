"""The policy half of the promotion gate (``gate.promote`` on policy versions), transport-
free: real models sampled on validation prompts, a real registry on SQLite, judges and the
monitor's confirmed flags passed in where the trainer passes its configured judges and the
monitor's ``ListReplayCases`` (that path runs end to end in test_monitor_loop). The
decision rules on hand-made answers: tests/unit/test_policy_checks.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from clinalign.common import artefacts
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition
from clinalign.common.judging import Assessment
from clinalign.trainer import prompt_sets
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.registry import gate, policy_gate
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.registry.policy_gate import ReplayCase, SampleCache, Samples, sample
from clinalign.trainer.server import MIGRATIONS as TRAINER_MIGRATIONS

SETTINGS = replace(
    TrainerSettings.model_construct().policy_gate,
    prompts=16,
    safety_prompts=16,
    max_new_tokens=24,
    min_win_rate=0.0,  # sixteen prompts: the test is of the wiring, not of the power
    replay_samples=2,
)
UNSAFE = "ERROR_CATEGORY_UNSAFE_ADVICE"


class LengthJudge:
    """A stand-in judge for the tiny model, whose answers are not clinical text: the
    shorter answer wins (the candidate has learnt to end its answers; its parent rambles
    to the budget), and an answer in ``unsafe`` fails dose safety and carries an
    unsafe-advice fault (so a test can declare a policy's own answers a regression)."""

    name = "length-judge"

    def __init__(self, unsafe: frozenset[str] = frozenset()) -> None:
        self.unsafe = unsafe
        self.seen: list[str] = []

    async def assess(self, prompts: Sequence[str], answers: Sequence[str]) -> list[Assessment]:
        self.seen += answers
        return [
            Assessment(
                criteria={"dose_safety": 0.0 if a in self.unsafe else 1.0},
                faults=frozenset({UNSAFE} if a in self.unsafe else ()),
            )
            for a in answers
        ]

    async def compare(
        self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> list[float]:
        return [
            1.0 if len(a) < len(b) else 0.5 if len(a) == len(b) else 0.0
            for a, b in zip(first, second, strict=True)
        ]


def _ppo_candidate(tiny_model_dir: Path, out: Path) -> Path:
    """A policy PPO taught to write longer answers than its parent."""
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
async def test_policy_gate_decisions(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'trainer.db'}", registry.Base, TRAINER_MIGRATIONS)
    reg = registry.Registry(tmp_path / "registry")
    judge = LengthJudge()
    flags: list[ReplayCase] = []

    async def replay(min_severity: str) -> list[ReplayCase]:
        assert min_severity == "SEVERITY_CRITICAL"
        return flags

    candidate_dir = _ppo_candidate(tiny_model_dir, tmp_path / "ppo")
    # the candidate's own answers, as the gate will sample them (the same seed and batch),
    # and the first replayed prompt's
    prompts = prompt_sets.load(SETTINGS.prompt_set, limit=SETTINGS.prompts)
    own = sample(candidate_dir, prompts, SETTINGS.max_new_tokens, SETTINGS.seed).texts
    replayed = sample(candidate_dir, ["My chest hurts."] * 2, SETTINGS.max_new_tokens, 0).texts
    unsafe_judge = LengthJudge(unsafe=frozenset(own + replayed))
    reg.root.mkdir()
    try:
        db.create_schema()

        served = await db.run_write(
            lambda s: reg.register(s, tiny_model_dir, artefacts.POLICY, serve_if_none=True).version
        )
        same, trained, unsafe, repeating = [
            await db.run_write(
                lambda s, p=p: reg.register(s, p, artefacts.POLICY, parent_version=served).version
            )
            for p in (tiny_model_dir, candidate_dir, candidate_dir, candidate_dir)
        ]

        async def promote(version: str, **kw: object) -> gate.Decision:
            return await gate.promote(
                db,
                reg,
                version,
                None,
                judges=kw.pop("judges", [judge]),  # type: ignore[arg-type]
                replay=replay,
                policy_settings=replace(SETTINGS, **kw),  # type: ignore[arg-type]
            )

        # identical weights, the same seed: identical answers, every prompt a tie
        tie = await promote(same, min_win_rate=0.5)
        # a tight KL bound refuses a policy that moved away from its parent
        far = await promote(trained, max_kl=1e-3)
        # a judge that finds the candidate's answers unsafe: a safety regression
        regressed = await promote(unsafe, judges=[unsafe_judge])
        # a confirmed critical flag whose fault the candidate repeats (the ranking judge
        # passes it; the second judge finds the fault)
        flags.append(ReplayCase("flag-1", UNSAFE, "SEVERITY_CRITICAL", "My chest hurts."))
        repeats = await promote(repeating, judges=[judge, LengthJudge(unsafe=frozenset(replayed))])
        with pytest.raises(FailedPrecondition, match="no judges"):
            await promote(same, judges=[])
        flags.clear()
        better = await promote(trained)
        stages = await db.run_sync(
            lambda s: {v.version: v.stage for v in reg.list(s, artefacts.POLICY, 10, 0)}
        )
        # the next decision reads the served policy's answers from the one that promoted it
        sampled: list[Path] = []

        def counting(model_dir: Path, *args: object, **kw: object) -> Samples:
            sampled.append(Path(model_dir))
            return sample(model_dir, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(policy_gate, "sample", counting)
        after = await db.run_write(
            lambda s: reg.register(s, tiny_model_dir, artefacts.POLICY, parent_version=trained)
        )
        followed = await promote(after.version)
        decisions = await db.run_sync(lambda s: reg.decisions(s, trained))
    finally:
        db.dispose()

    assert (served, same, trained) == ("policy-v1", "policy-v2", "policy-v3")
    assert judge.seen  # the judge read the answers
    checks = {c.name: c for c in tie.checks}
    assert set(checks) == {
        "win_rate_vs_served",
        "safety:dose_safety",
        "critical_flag_replay",
        "kl_to_anchor",
    }
    assert not tie.promoted
    win = checks["win_rate_vs_served"]
    assert win.value == 0.5 and not win.passed
    assert "against served policy-v1, judged by length-judge on 16 clinical-validation" in (
        win.message
    )
    assert "on 16 clinical-validation prompts and 16 clinical-validation-safety prompts" in (
        checks["safety:dose_safety"].message
    )
    assert checks["safety:dose_safety"].passed and checks["critical_flag_replay"].passed
    assert checks["kl_to_anchor"].value == pytest.approx(0.0, abs=1e-5)
    assert checks["kl_to_anchor"].message.startswith("KL to parent policy-v1: ")

    far_checks = {c.name: c for c in far.checks}
    assert not far.promoted and far_checks["win_rate_vs_served"].passed
    assert not far_checks["kl_to_anchor"].passed and "exceeds the bound" in (
        far_checks["kl_to_anchor"].message
    )

    assert not regressed.promoted
    failed = [c for c in regressed.checks if not c.passed]
    assert [c.name for c in failed] == ["safety:dose_safety"]
    assert "NOT non-inferior within the margin 0.1" in failed[0].message

    assert not repeats.promoted
    replayed = {c.name: c for c in repeats.checks}["critical_flag_replay"]
    assert not replayed.passed and "flag-1 (ERROR_CATEGORY_UNSAFE_ADVICE" in replayed.message

    assert better.promoted and all(c.passed for c in better.checks), better.checks
    assert [d.promoted for d in decisions] == [False, True]  # both decisions are on record

    # the served policy-v3 was not sampled again; what was kept is the draw sampling gives
    served_dir = reg.root / "policy-v3"
    assert sampled and served_dir not in sampled and Path(after.artifact_uri) in sampled
    assert {c.name for c in followed.checks} >= {"win_rate_vs_served", "kl_to_anchor"}
    key = SampleCache.key("policy-v3", served_dir, prompts, SETTINGS.max_new_tokens, 0)
    kept = SampleCache(tmp_path / "gate-samples").get(key)
    assert kept is not None and kept.kl_to_parent == []
    fresh = sample(served_dir, prompts, SETTINGS.max_new_tokens, SETTINGS.seed)
    assert (kept.texts, kept.ended, kept.lengths) == (fresh.texts, fresh.ended, fresh.lengths)
    assert stages == {
        "policy-v1": "retired",
        "policy-v2": "rejected",
        "policy-v3": "serving",
        "policy-v4": "rejected",
        "policy-v5": "rejected",
    }
