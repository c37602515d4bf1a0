"""The job kinds trained with a Hugging Face ``Trainer`` on a snapshot export:
``reward_model`` (``clinalign.trainer.methods.reward_model``), ``sft`` and ``dpo``
(``clinalign.trainer.methods.sft``, ``.dpo``) and ``cost_model``
(``clinalign.trainer.methods.cost_model``): checking their specs at submission, and
running them in the worker process.

Submission resolves the base model directory and its registry version, the
hyperparameters and the LoRA settings into the job's ``inputs`` (``specs``), and a spec
with ``resume_job_id`` continues a failed or cancelled job of its kind from its last
checkpoint (``specs.resume_inputs``). The run trains on the snapshot export the worker
fetched (preference pairs for ``reward_model`` and ``dpo``, SFT records for ``sft``, harm
records for ``cost_model``) and the worker registers the result: a reward or cost version,
or a policy version whose parent is the base model's version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from clinalign.common.artefacts import ProgressFn
from clinalign.common.errors import InvalidArgument
from clinalign.trainer.jobs import specs


def _check(session: Session, spec: dict[str, Any], kind: str, hyper_class: Any) -> dict[str, Any]:
    if spec.get("resume_job_id"):
        return specs.resume_inputs(session, spec, kind)
    if not spec.get("snapshot_id"):
        raise InvalidArgument(
            "spec.snapshot_id", "is required: the preference snapshot id or content hash"
        )
    base_dir, parent = specs.resolve_base_model(session, str(spec.get("base_model", "")))
    return {
        "base_model_dir": base_dir,
        "parent_version": parent,
        "hyperparameters": specs.parse_fields(
            dict(spec.get("hyperparameters", {})), int(spec.get("seed", 0)), hyper_class
        ),
        "lora": specs.parse_lora(dict(spec.get("lora", {}))),
    }


def check_sft_spec(session: Session, spec: dict[str, Any]) -> dict[str, Any]:
    """Checks an sft spec (protobuf JSON form); returns the job's inputs."""
    # Imported here: it loads torch and TRL, which the trainer needs only once a job of
    # this kind is submitted.
    from clinalign.trainer.methods.sft import SFTHyperparameters

    return _check(session, spec, "sft", SFTHyperparameters)


def check_dpo_spec(session: Session, spec: dict[str, Any]) -> dict[str, Any]:
    """Checks a dpo spec (protobuf JSON form); returns the job's inputs."""
    from clinalign.trainer.methods.dpo import DPOHyperparameters

    return _check(session, spec, "dpo", DPOHyperparameters)


def check_cost_model_spec(session: Session, spec: dict[str, Any]) -> dict[str, Any]:
    """Checks a cost_model spec (protobuf JSON form); returns the job's inputs. Its base
    model is a policy (the served one by default): the cost model reads with the policy's
    tokenizer, as the reward model does."""
    from clinalign.trainer.methods.cost_model.training import CostHyperparameters

    return _check(session, spec, "cost_model", CostHyperparameters)


def train_cost_model_job(
    job_dir: Path, snapshot: Path, inputs: dict[str, Any], progress: ProgressFn
) -> tuple[Path, dict[str, Any]]:
    """Trains the cost model on the harm export into ``<job_dir>/model``; (dir, manifest)."""
    from clinalign.trainer.methods.cost_model.training import (
        CostHyperparameters,
        train_cost_model,
    )

    return specs.run_trainer(
        train_cost_model, CostHyperparameters, job_dir, snapshot, inputs, progress
    )


def train_sft_job(
    job_dir: Path, snapshot: Path, inputs: dict[str, Any], progress: ProgressFn
) -> tuple[Path, dict[str, Any]]:
    """Fine-tunes the policy on the SFT export into ``<job_dir>/model``; (dir, manifest)."""
    from clinalign.trainer.methods.sft import SFTHyperparameters, train_sft

    return specs.run_trainer(train_sft, SFTHyperparameters, job_dir, snapshot, inputs, progress)


def train_dpo_job(
    job_dir: Path, snapshot: Path, inputs: dict[str, Any], progress: ProgressFn
) -> tuple[Path, dict[str, Any]]:
    """DPO on the preference export into ``<job_dir>/model``; (dir, manifest)."""
    from clinalign.trainer.methods.dpo import DPOHyperparameters, train_dpo

    return specs.run_trainer(train_dpo, DPOHyperparameters, job_dir, snapshot, inputs, progress)


def parse_hyperparameters(values: dict[str, str], seed: int) -> dict[str, Any]:
    """The spec's ``hyperparameters`` map as ``RewardHyperparameters`` fields, checked;
    errors name ``spec.hyperparameters[<key>]``. ``seed`` is the spec's seed, used
    unless the map sets one."""
    # Imported here: it loads torch and TRL, which the trainer needs only once a
    # reward-model job is submitted.
    from clinalign.trainer.methods.reward_model.training import RewardHyperparameters

    return specs.parse_fields(values, seed, RewardHyperparameters)


def check_reward_model_spec(session: Session, spec: dict[str, Any]) -> dict[str, Any]:
    """Checks a reward_model spec (protobuf JSON form); returns the job's inputs."""
    if spec.get("resume_job_id"):
        return specs.resume_inputs(session, spec, "reward_model")
    if not spec.get("snapshot_id"):
        raise InvalidArgument(
            "spec.snapshot_id", "is required: the preference snapshot id or content hash"
        )
    base_dir, parent = specs.resolve_base_model(
        session, str(spec.get("base_model", "")), reward=True
    )
    return {
        "base_model_dir": base_dir,
        "parent_version": parent,
        "hyperparameters": parse_hyperparameters(
            dict(spec.get("hyperparameters", {})), int(spec.get("seed", 0))
        ),
        "lora": specs.parse_lora(dict(spec.get("lora", {}))),
    }


def train_reward_model_job(
    job_dir: Path, snapshot: Path, inputs: dict[str, Any], progress: ProgressFn
) -> tuple[Path, dict[str, Any]]:
    """Trains the reward model into ``<job_dir>/model``; (directory, manifest)."""
    from clinalign.trainer.methods.reward_model.training import (
        RewardHyperparameters,
        train_reward_model,
    )

    return specs.run_trainer(
        train_reward_model, RewardHyperparameters, job_dir, snapshot, inputs, progress
    )
