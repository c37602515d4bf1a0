"""What a PPO output says about itself (issue 20): the KL anchor a run takes from its base
(``anchor.kl_anchor``) and records for the next round, and a manifest ``method`` that names
the algorithm that ran: "ppo" with a critic and GAE, or "rloo" without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinalign.common.artefacts import MANIFEST_NAME, LoraSettings
from clinalign.trainer.methods.ppo.anchor import Anchor, kl_anchor
from clinalign.trainer.methods.ppo.checkpoint import LoopState, build_manifest, method
from clinalign.trainer.methods.ppo.config import PPOHyperparameters


def _model_dir(path: Path, manifest: dict[str, object] | None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if manifest is not None:
        (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    return path


def test_a_base_without_a_recorded_anchor_is_its_own_anchor(tmp_path: Path) -> None:
    sft = _model_dir(tmp_path / "sft", {"kind": "policy", "base_model": "/foundation"})
    assert kl_anchor(sft, "policy-v1") == Anchor("policy-v1", sft.resolve())
    bare = _model_dir(tmp_path / "bare", None)  # a foundation model: no manifest at all
    assert kl_anchor(bare) == Anchor("", bare.resolve())


def test_a_ppo_output_passes_its_anchor_on(tmp_path: Path) -> None:
    sft = _model_dir(tmp_path / "sft", None)
    round_1 = _model_dir(
        tmp_path / "round-1",
        {"kind": "policy", "kl_anchor_version": "policy-v1", "kl_anchor_path": str(sft)},
    )
    assert kl_anchor(round_1, "policy-v2") == Anchor("policy-v1", sft)


def _manifest(hyper: PPOHyperparameters, policy: Path, anchor: Anchor, **kw: object) -> dict:
    return build_manifest(
        hyper,
        kw.get("lora"),  # type: ignore[arg-type]
        LoopState(iteration=1, history=[[1, {"score": 0.5}]]),
        {"parent_version": "policy-v2"},
        0.0,
        kw.get("critic_dir"),  # type: ignore[arg-type]
        1,
        anchor,
        policy,
    )


def test_the_manifest_records_the_anchor_and_the_reference_it_was(tmp_path: Path) -> None:
    sft, round_1 = tmp_path / "sft", tmp_path / "round-1"
    hyper = PPOHyperparameters()
    kept = _manifest(hyper, round_1, Anchor("policy-v1", sft))
    assert kept["kl_anchor_version"] == "policy-v1"
    assert kept["kl_anchor_path"] == str(sft)
    assert kept["method"]["reference"] == "frozen copy of the KL anchor policy-v1"
    own = _manifest(hyper, sft, Anchor("policy-v1", sft))
    assert own["method"]["reference"] == "frozen copy of the initial policy"
    with_lora = _manifest(hyper, sft, Anchor("", sft), lora=LoraSettings())
    assert with_lora["method"]["reference"] == "base weights with the adapter disabled"
    assert with_lora["kl_anchor_version"] == ""


@pytest.mark.parametrize(
    ("settings", "critic_dir", "expected"),
    [
        (
            {},
            Path("/rm"),
            {
                "algorithm": "ppo",
                "advantage_estimator": "gae",
                "uses_critic": True,
                "critic": "separate",
                "critic_init": "reward model, normalisation folded into its head",
                "critic_init_path": "/rm",
                "advantage_whitening": "per token, mean and scale",
            },
        ),
        (
            {"critic": "value_head", "whiten_advantages": False},
            Path("/rm"),  # a value head ignores the reward model
            {
                "algorithm": "ppo",
                "uses_critic": True,
                "critic": "value_head",
                "critic_init": "zero value head on the policy's trunk",
                "critic_init_path": None,
                "advantage_whitening": None,
            },
        ),
        (
            {},
            None,
            {"uses_critic": True, "critic_init": "policy weights, zero head"},
        ),
        (
            {"advantage_estimator": "rloo", "samples_per_prompt": 4},
            Path("/rm"),  # rloo builds no critic, whatever it is offered
            {
                "algorithm": "rloo",
                "advantage_estimator": "rloo",
                "policy_loss": "ppo_clip",
                "uses_critic": False,
                "critic": None,
                "critic_init": None,
                "critic_init_path": None,
                "advantage_whitening": "per response, scale only",
            },
        ),
    ],
)
def test_the_method_names_what_ran(
    settings: dict[str, object], critic_dir: Path | None, expected: dict[str, object]
) -> None:
    hyper = PPOHyperparameters(**settings)  # type: ignore[arg-type]
    got = method(hyper, None, critic_dir, 1, Anchor("", Path("/p")), Path("/p"))
    assert {k: got[k] for k in expected} == expected
