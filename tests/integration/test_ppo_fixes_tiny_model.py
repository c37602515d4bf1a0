"""Issue 20's PPO fixes on the tiny fixture model: the critic starts on the returns' scale
(its value of a text is the reward service's normalised score of it); a checkpoint's
``generation_config.json`` cannot change the rollout's distribution; and a second round of
PPO keeps the first round's KL anchor, at submission and in the run."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from transformers import GenerationConfig

from clinalign.common.artefacts import MANIFEST_NAME, NORMALISATION_FILE, POLICY, REWARD
from clinalign.common.errors import InvalidArgument
from clinalign.common.prompts import render_user_prompt
from clinalign.common.reward_format import reward_ids
from clinalign.reward.scorer import Scorer
from clinalign.trainer.jobs.ppo_job import check_ppo_spec
from clinalign.trainer.methods.ppo import core
from clinalign.trainer.methods.ppo.checkpoint import CRITIC_DIR, SCORE_HEAD_FILE
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.models import build_models, load_tokenizer, positions
from clinalign.trainer.methods.ppo.rollout import (
    Rollout,
    checkpoint_defaults_off,
    generate_responses,
    generation_config,
)
from clinalign.trainer.methods.ppo.trainer import train_ppo
from clinalign.trainer.registry.versions import Registry

PROMPTS = [f"I have had a dry cough for {n} days. What should I do?" for n in range(2, 6)]
ANSWERS = ["Rest, drink fluids and see a doctor if it lasts.", "See your GP."]
HYPER = PPOHyperparameters(
    rollout_batch_size=4,
    minibatches=2,
    ppo_epochs=2,
    response_length=10,
    temperature=0.7,  # not 1, so the log-probabilities must use it to match the sampler
    learning_rate=1e-2,
    checkpoint_every=0,
    seed=3,
)
# Every setting an instruct checkpoint might carry that would change what is sampled.
HOSTILE_GENERATION = {
    "do_sample": False,
    "temperature": 0.3,
    "top_k": 3,
    "top_p": 0.5,
    "min_p": 0.2,
    "typical_p": 0.5,
    "epsilon_cutoff": 0.001,
    "eta_cutoff": 0.001,
    "repetition_penalty": 2.0,
    "no_repeat_ngram_size": 2,
    "min_new_tokens": 4,
    "suppress_tokens": [5, 6],
    "begin_suppress_tokens": [7],
    "bad_words_ids": [[8]],
    "sequence_bias": [[[9], 5.0]],
    "exponential_decay_length_penalty": [2, 1.5],
    "forced_eos_token_id": 2,
    "renormalize_logits": True,
    "max_new_tokens": 3,
}


@pytest.fixture
def accelerator() -> Iterator[Accelerator]:
    AcceleratorState._reset_state(reset_partial_state=False)  # as train_ppo does
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=False)


# -- the critic starts where the reward service scores -------------------------------------


def test_the_initial_critic_values_a_text_as_the_reward_service_scores_it(
    tiny_model_dir: Path, tiny_reward_dir: Path, tmp_path: Path, accelerator: Accelerator
) -> None:
    reward_dir = tmp_path / "reward"
    shutil.copytree(tiny_reward_dir, reward_dir)
    (reward_dir / NORMALISATION_FILE).write_text(json.dumps({"mean": 0.7, "std": 2.5}))
    scorer = Scorer(reward_dir, "reward-v1", "cpu")
    pairs = [(p, a) for p, a in zip(PROMPTS, ANSWERS * 2, strict=True)]
    scored = scorer.score(pairs, truncate=False)
    assert all(abs(s.score - s.raw_score) > 0.1 for s in scored)  # the normalisation matters

    tokenizer = load_tokenizer(tiny_model_dir)
    model, _ = build_models(
        tiny_model_dir, tokenizer, HYPER, accelerator.device, critic_dir=reward_dir
    )
    model.eval()
    for (prompt, answer), expected in zip(pairs, scored, strict=True):
        # the state after the whole text is the one before one more token
        ids = torch.tensor([[*reward_ids(tokenizer, prompt, answer), tokenizer.eos_token_id]])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            _, values = model(ids, mask, positions(mask), 1)  # [1, 1]
        assert float(values[0, 0]) == pytest.approx(expected.score, abs=1e-5)


# -- the rollout samples from the distribution the loss recomputes --------------------------


def _hostile_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    hostile = tmp_path / "hostile"
    shutil.copytree(tiny_model_dir, hostile)
    config = json.loads((hostile / "generation_config.json").read_text())
    (hostile / "generation_config.json").write_text(json.dumps({**config, **HOSTILE_GENERATION}))
    return hostile


def _rollout(model_dir: Path, accelerator: Accelerator) -> tuple[Any, Any, Rollout]:
    tokenizer = load_tokenizer(model_dir)
    model, _ = build_models(model_dir, tokenizer, HYPER, accelerator.device)
    model.eval()
    texts = [render_user_prompt(tokenizer, p) for p in PROMPTS]
    torch.manual_seed(11)
    return model, tokenizer, generate_responses(model.policy, tokenizer, texts, HYPER, accelerator)


def _logprobs(model: Any, rollout: Rollout) -> torch.Tensor:
    """log π of each sampled token recomputed as the loss does: [B, T]."""
    ids = torch.cat([rollout.queries, rollout.responses], dim=1)
    mask = torch.cat([rollout.query_mask, rollout.response_mask], dim=1)
    width = rollout.responses.shape[1]
    with torch.no_grad():
        logits, _ = model(ids, mask, positions(mask), width)
    return core.logprobs_from_logits(logits.float(), rollout.responses, HYPER.temperature)


def test_a_checkpoints_generation_config_cannot_change_the_rollout(
    tiny_model_dir: Path, tmp_path: Path, accelerator: Accelerator
) -> None:
    hostile = _hostile_copy(tiny_model_dir, tmp_path)
    plain_model, _, plain = _rollout(tiny_model_dir, accelerator)
    hostile_model, tokenizer, pinned = _rollout(hostile, accelerator)
    assert torch.equal(plain.responses, pinned.responses)
    assert torch.equal(plain.response_mask, pinned.response_mask)
    torch.testing.assert_close(_logprobs(plain_model, plain), _logprobs(hostile_model, pinned))
    # the checkpoint's settings are still there (the saved policy keeps them)
    assert hostile_model.policy.generation_config.repetition_penalty == 2.0

    # what generate sampled from is what the loss recomputes: the processed scores at each
    # step, log-softmaxed, at the sampled tokens
    config = generation_config(HYPER, tokenizer)
    config.output_scores = config.return_dict_in_generate = True
    torch.manual_seed(11)
    with torch.no_grad(), checkpoint_defaults_off(hostile_model.policy):
        out = hostile_model.policy.generate(
            input_ids=pinned.queries, attention_mask=pinned.query_mask, generation_config=config
        )
    steps = torch.stack(out.scores, dim=1)  # [B, T, V]
    width = pinned.responses.shape[1]
    sampled = torch.log_softmax(steps[:, :width].float(), dim=-1).gather(
        -1, pinned.responses[..., None]
    )[..., 0]
    keep = pinned.response_mask.bool()
    torch.testing.assert_close(sampled[keep], _logprobs(hostile_model, pinned)[keep])

    # the settings the rollout used before issue 20 let the checkpoint in
    unpinned = GenerationConfig(
        do_sample=True,
        temperature=HYPER.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=HYPER.response_length,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(11)
    with torch.no_grad():
        leaked = hostile_model.policy.generate(
            input_ids=pinned.queries, attention_mask=pinned.query_mask, generation_config=unpinned
        )[:, pinned.queries.shape[1] :]
    assert not torch.equal(leaked[:, :width], pinned.responses)


# -- the KL anchor stays the SFT policy ------------------------------------------------------


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_second_round_keeps_the_first_rounds_anchor(
    tiny_model_dir: Path, tiny_reward_dir: Path, tmp_path: Path, accelerator: Accelerator
) -> None:
    hyper = dataclasses.replace(HYPER, iterations=2)
    prompts = PROMPTS * 2
    words = lambda ps, rs: [min(len(r.split()), 8) / 8 for r in rs]  # noqa: E731
    first = train_ppo(
        prompts, tiny_model_dir, tmp_path / "round-1", hyper, words, critic_dir=tiny_reward_dir
    )
    sft = str(tiny_model_dir.resolve())
    assert first["kl_anchor_path"] == sft
    assert first["method"]["reference"] == "frozen copy of the initial policy"
    assert series_first(first, "kl") == pytest.approx(0.0, abs=1e-5)  # policy = reference
    assert (tmp_path / "round-1" / CRITIC_DIR / SCORE_HEAD_FILE).is_file()  # the folded bias

    second = train_ppo(
        prompts,
        tmp_path / "round-1",
        tmp_path / "round-2",
        hyper,
        words,
        critic_dir=tiny_reward_dir,
    )
    assert second["kl_anchor_path"] == sft  # the SFT policy, not round 1's output
    assert second["method"]["reference"] == f"frozen copy of the KL anchor {sft}"
    assert series_first(second, "kl") > 1e-3  # round 1 moved away from it, and it shows

    # the reference the second round builds holds the anchor's weights
    tokenizer = load_tokenizer(tmp_path / "round-1")
    _, reference = build_models(
        tmp_path / "round-1", tokenizer, hyper, accelerator.device, reference_dir=tiny_model_dir
    )
    assert reference is not None
    anchor_weights = load_file(tiny_model_dir / "model.safetensors")
    got = _weights(reference)
    assert all(torch.equal(got[k], v) for k, v in anchor_weights.items() if k in got)
    round_1 = load_file(tmp_path / "round-1" / "model.safetensors")
    assert any(not torch.equal(got[k], v) for k, v in round_1.items() if k in got)


def series_first(manifest: dict[str, Any], key: str) -> float:
    return float(manifest["history"][0][1][key])


def test_submission_resolves_the_anchor_from_the_base_lineage(
    tiny_model_dir: Path, tiny_reward_dir: Path, tmp_path: Path, trainer_db: Any
) -> None:
    registry = Registry(tmp_path / "registry")
    spec = {"prompt_set": "clinical-train", "reward_model_version": "reward-v1"}
    round_1 = tmp_path / "round-1"
    shutil.copytree(tiny_model_dir, round_1)
    with trainer_db.sessions.begin() as session:
        sft = registry.register(session, tiny_model_dir, POLICY)
        registry.register(session, tiny_reward_dir, REWARD)
        first = check_ppo_spec(session, {**spec, "base_model": sft.version})
        assert (first["kl_anchor_version"], first["kl_anchor_dir"]) == (
            sft.version,
            first["base_model_dir"],
        )
        manifest = {"kind": POLICY, "kl_anchor_version": sft.version, "kl_anchor_path": "/moved"}
        (round_1 / MANIFEST_NAME).write_text(json.dumps(manifest))
        served = registry.register(session, round_1, POLICY)  # round 1's output, registered
        second = check_ppo_spec(session, {**spec, "base_model": served.version})
        assert second["base_model_dir"] != first["base_model_dir"]
        # the anchor's registered directory, wherever the manifest last saw it
        assert (second["kl_anchor_version"], second["kl_anchor_dir"]) == (
            sft.version,
            first["base_model_dir"],
        )
        (round_1 / MANIFEST_NAME).write_text(
            json.dumps({**manifest, "kl_anchor_version": "", "kl_anchor_path": "/gone"})
        )
        with pytest.raises(InvalidArgument, match="KL anchor /gone, which is no longer"):
            check_ppo_spec(session, {**spec, "base_model": str(round_1)})
