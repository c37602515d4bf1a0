"""ClinAlign's PPO loop (``clinalign.trainer.methods.ppo.trainer``) on the tiny fixture model with a
reward it can learn: a response scores by its length in words, capped, once it ends, and a
response that never ends gets the fixed penalty. The reward service's part is tested
through gRPC in ``test_ppo_job``; here the loop itself: learning within a bounded KL, the
LoRA reference, saving, and a resumed run that reproduces an uninterrupted one exactly."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from clinalign.common.artefacts import MANIFEST_NAME, LoraSettings
from clinalign.common.errors import InvalidArgument
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.trainer import CRITIC_DIR, last_checkpoint, train_ppo

PROMPTS = [
    f"I have had a dry cough for {n} days and a mild fever. What should I do?" for n in range(2, 34)
]


def words_score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    assert len(prompts) == len(responses)
    return [min(len(r.split()), 8) / 8 for r in responses]


def fast(**overrides: Any) -> PPOHyperparameters:
    """Settings that learn on the tiny model in seconds (its 48-wide layers want a large
    learning rate; the production default is 3e-6)."""
    base: dict[str, Any] = {
        "iterations": 30,
        "rollout_batch_size": 8,
        "minibatches": 2,
        "ppo_epochs": 2,
        "response_length": 24,
        "learning_rate": 1e-3,
        "checkpoint_every": 0,
        "seed": 3,
    }
    return PPOHyperparameters(**{**base, **overrides})


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def series(manifest: dict[str, Any], key: str) -> list[float]:
    return [float(figures[key]) for _, figures in manifest["history"]]


@pytest.mark.slow
@pytest.mark.parametrize("critic", ["separate", "value_head"])
def test_ppo_raises_reward_within_bounded_kl(
    critic: str, tiny_model_dir: Path, tiny_reward_dir: Path, tmp_path: Path
) -> None:
    logged: list[tuple[int, int, dict[str, float]]] = []
    manifest = train_ppo(
        PROMPTS,
        tiny_model_dir,
        tmp_path / "out",
        fast(critic=critic),
        words_score,
        critic_dir=tiny_reward_dir if critic == "separate" else None,
        progress=lambda i, n, f: logged.append((i, n, dict(f))),
    )
    score = series(manifest, "score")
    assert fmean(score[-8:]) > fmean(score[:8]) + 0.3, score
    assert max(series(manifest, "kl")) < 15.0  # nats per response, well inside the bound
    assert [i for i, _, _ in logged] == list(range(1, 31))
    assert all(n == 30 for _, n, _ in logged)
    for key in ("approx_kl", "clip_frac", "entropy", "value_loss", "explained_variance", "kl_coef"):
        assert key in logged[-1][2]
    # the adaptive controller moved β, and by no more than its clipped error allows
    beta = series(manifest, "kl_coef")
    assert beta[0] == 0.15 and beta[-1] != beta[0]
    assert all(abs(b / a - 1) <= 0.2 * 8 / 10_000 + 1e-12 for a, b in itertools.pairwise(beta))
    out = tmp_path / "out"
    before, after = weights(tiny_model_dir), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / MANIFEST_NAME).read_text())["method"]["critic"] == critic
    assert (out / CRITIC_DIR).is_dir()


@pytest.mark.slow
def test_rloo_learns_without_a_critic_from_groups_of_one_prompt(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    scored: list[list[str]] = []

    def recording_score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        scored.append(list(prompts))
        return words_score(prompts, responses)

    hyper = fast(advantage_estimator="rloo", samples_per_prompt=4, kl_controller="fixed")
    manifest = train_ppo(PROMPTS, tiny_model_dir, tmp_path / "out", hyper, recording_score)
    score = series(manifest, "score")
    assert fmean(score[-8:]) > fmean(score[:8]) + 0.3, score
    assert max(series(manifest, "kl")) < 15.0
    # every iteration asks 8 / 4 = 2 prompts four times each (finished answers only reach
    # the scorer, so a group may be short, never mixed)
    drawn = list(itertools.chain.from_iterable(scored))
    assert len(set(drawn)) > 2  # the prompts move on between iterations
    for batch in scored:
        assert len(set(batch)) <= 2
        assert [p for p, _ in itertools.groupby(batch)] == list(dict.fromkeys(batch))
    assert all(f["explained_variance"] is None for _, f in manifest["history"])
    assert manifest["method"]["advantage_estimator"] == "rloo"
    assert manifest["method"]["critic"] is None
    assert not (tmp_path / "out" / CRITIC_DIR).exists()  # there is no critic to save


@pytest.mark.slow
def test_lora_reference_is_the_base_with_the_adapter_off(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    manifest = train_ppo(
        PROMPTS,
        tiny_model_dir,
        tmp_path / "out",
        fast(iterations=6, critic="value_head", learning_rate=5e-3),
        words_score,
        lora=LoraSettings(r=8, alpha=16),
    )
    # At the first rollout the adapter is zero (peft initialises B to 0): policy = reference.
    assert series(manifest, "kl")[0] == pytest.approx(0.0, abs=1e-4)
    assert series(manifest, "kl")[-1] > 1e-3  # and then it moves away
    assert manifest["method"]["reference"] == "base weights with the adapter disabled"
    before, after = weights(tiny_model_dir), weights(tmp_path / "out")
    assert set(before) == set(after)  # merged into an ordinary full model
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    hyper = fast(iterations=6, checkpoint_every=3, critic="value_head")
    whole = train_ppo(
        PROMPTS,
        tiny_model_dir,
        tmp_path / "whole",
        hyper,
        words_score,
        checkpoint_dir=tmp_path / "ck-whole",
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
            checkpoint_dir=tmp_path / "ck-cut",
            progress=die_at_5,
        )
    checkpoint = last_checkpoint(tmp_path / "ck-cut")
    assert checkpoint is not None and checkpoint.name == "checkpoint-3"
    resumed = train_ppo(
        PROMPTS,
        tiny_model_dir,
        tmp_path / "resumed",
        hyper,
        words_score,
        resume_from=checkpoint,
    )
    assert [i for i, _ in resumed["history"]] == list(range(1, 7))
    # same samples, same updates: optimiser, RNG, data position and β all came back
    for key in ("score", "kl", "kl_coef", "policy_loss"):
        assert series(resumed, key) == pytest.approx(series(whole, key), rel=1e-5, abs=1e-6)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bad_settings_name_the_field(tiny_model_dir: Path, tmp_path: Path) -> None:
    cases = {
        "minibatches": fast(rollout_batch_size=8, minibatches=3),
        "critic": fast(critic="twin"),
        "gamma": fast(gamma=1.5),
        "kl_coef": fast(kl_coef=0.0),
        "advantage_estimator": fast(advantage_estimator="vtrace"),
        "samples_per_prompt": fast(advantage_estimator="rloo", samples_per_prompt=1),
    }
    with pytest.raises(InvalidArgument) as info:
        fast(rollout_batch_size=8, samples_per_prompt=3).validate()
    assert info.value.field == "samples_per_prompt"
    assert "stay in one process" in str(info.value)
    for field, hyper in cases.items():
        with pytest.raises(InvalidArgument) as info:
            train_ppo(PROMPTS, tiny_model_dir, tmp_path / field, hyper, words_score)
        assert info.value.field == field
    with pytest.raises(InvalidArgument) as info:
        train_ppo([], tiny_model_dir, tmp_path / "none", fast(), words_score)
    assert info.value.field == "prompts"
    assert not any((tmp_path / name).exists() for name in (*cases, "none"))
