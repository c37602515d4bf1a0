"""The ``sft`` and ``dpo`` job kinds: checking their specs at submission, and running them
in the worker process.

As for ``reward_model`` (``clinalign.trainer.reward_job``, whose base-model, LoRA and
hyperparameter checks these reuse), submission resolves the base model directory and its
registry version, the hyperparameters and the LoRA settings into the job's ``inputs``, and
a spec with ``resume_job_id`` continues a failed or cancelled job of its kind from its
last checkpoint (``reward_job.resume_inputs``).
The run trains on the snapshot export the worker fetched (SFT records for ``sft``,
preference pairs for ``dpo``) and the worker registers the result as a policy version
whose parent is the base model's version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from clinalign.common.errors import InvalidArgument
from clinalign.trainer import reward_job
from clinalign.trainer.reward_job import ProgressFn, run_trainer


def _check(session: Session, spec: dict[str, Any], kind: str, hyper_class: Any) -> dict[str, Any]:
    if spec.get("resume_job_id"):
        return reward_job.resume_inputs(session, spec, kind)
    if not spec.get("snapshot_id"):
        raise InvalidArgument(
            "spec.snapshot_id", "is required: the preference snapshot id or content hash"
        )
    base_dir, parent = reward_job.resolve_base_model(session, str(spec.get("base_model", "")))
    return {
        "base_model_dir": base_dir,
        "parent_version": parent,
        "hyperparameters": reward_job.parse_fields(
            dict(spec.get("hyperparameters", {})), int(spec.get("seed", 0)), hyper_class
        ),
        "lora": reward_job.parse_lora(dict(spec.get("lora", {}))),
    }


def check_sft_spec(session: Session, spec: dict[str, Any]) -> dict[str, Any]:
    """Checks an sft spec (protobuf JSON form); returns the job's inputs."""
    # Imported here: it loads torch and TRL, which the trainer needs only once a job of
    # this kind is submitted.
    from clinalign.trainer.sft import SFTHyperparameters

    return _check(session, spec, "sft", SFTHyperparameters)


def check_dpo_spec(session: Session, spec: dict[str, Any]) -> dict[str, Any]:
    """Checks a dpo spec (protobuf JSON form); returns the job's inputs."""
    from clinalign.trainer.dpo import DPOHyperparameters

    return _check(session, spec, "dpo", DPOHyperparameters)


def train_sft_job(
    job_dir: Path, snapshot: Path, inputs: dict[str, Any], progress: ProgressFn
) -> tuple[Path, dict[str, Any]]:
    """Fine-tunes the policy on the SFT export into ``<job_dir>/model``; (dir, manifest)."""
    from clinalign.trainer.sft import SFTHyperparameters, train_sft

    return run_trainer(train_sft, SFTHyperparameters, job_dir, snapshot, inputs, progress)


def train_dpo_job(
    job_dir: Path, snapshot: Path, inputs: dict[str, Any], progress: ProgressFn
) -> tuple[Path, dict[str, Any]]:
    """DPO on the preference export into ``<job_dir>/model``; (dir, manifest)."""
    from clinalign.trainer.dpo import DPOHyperparameters, train_dpo

    return run_trainer(train_dpo, DPOHyperparameters, job_dir, snapshot, inputs, progress)
