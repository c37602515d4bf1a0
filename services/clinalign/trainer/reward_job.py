"""The ``reward_model`` job kind: checking its spec at submission, and running it in the
worker process.

Submission resolves everything the run depends on (the base model directory and its
registry version, the hyperparameters, the LoRA settings) into the job's ``inputs``, so
a job runs what was accepted even if the served policy changes while it waits. The run
fetches the snapshot export from the preference service, trains with
``clinalign.reward.training.train_reward_model`` and registers the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinalign.common.errors import InvalidArgument
from clinalign.trainer.registry import POLICY, ModelVersionRow

ProgressFn = Callable[[int, int, float], None]
SNAPSHOT_FILE = "snapshot.jsonl"
MODEL_DIR = "model"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{text!r} is not true or false")


# A hyperparameter dataclass's annotations (strings under `from __future__ import annotations`)
# → how to read a value of that type from the spec's string map.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "float": float,
    "int": int,
    "str": str,
    "bool": _parse_bool,
}


def parse_hyperparameters(values: dict[str, str], seed: int) -> dict[str, Any]:
    """The spec's ``hyperparameters`` map as ``RewardHyperparameters`` fields, checked;
    errors name ``spec.hyperparameters[<key>]``. ``seed`` is the spec's seed, used
    unless the map sets one."""
    # Imported here: it loads torch and TRL, which the trainer needs only once a
    # reward-model job is submitted.
    from clinalign.reward.training import RewardHyperparameters

    return parse_fields(values, seed, RewardHyperparameters)


def parse_fields(values: dict[str, str], seed: int, hyper_class: Any) -> dict[str, Any]:
    """The spec's ``hyperparameters`` map as fields of the dataclass ``hyper_class`` (which
    has ``seed`` and ``validate()``), checked; errors name ``spec.hyperparameters[<key>]``."""
    known = {f.name: str(f.type) for f in dataclasses.fields(hyper_class)}
    parsed: dict[str, Any] = {"seed": seed} if seed else {}
    for key, text in sorted(values.items()):
        where = f"spec.hyperparameters[{key}]"
        if key not in known:
            raise InvalidArgument(where, f"is not a hyperparameter; known: {', '.join(known)}")
        annotation = known[key]
        optional = annotation.endswith("| None")
        if optional and text.strip().lower() in ("", "none", "null"):
            parsed[key] = None
            continue
        parser = _PARSERS[annotation.removesuffix("| None").strip()]
        try:
            parsed[key] = parser(text)
        except ValueError:
            kind = annotation.removesuffix("| None").strip()
            raise InvalidArgument(where, f"{text!r} is not a valid {kind}") from None
    try:
        hyper_class(**parsed).validate()
    except InvalidArgument as err:
        raise InvalidArgument(
            f"spec.hyperparameters[{err.field}]", err.message.split(": ", 1)[-1]
        ) from None
    return parsed


def parse_lora(lora: dict[str, Any]) -> dict[str, Any] | None:
    """The spec's LoRA settings as ``LoraSettings`` fields, or None when disabled."""
    if not lora.get("enabled"):
        return None
    rank = int(lora.get("rank", 0)) or 16
    if not 1 <= rank <= 256:
        raise InvalidArgument("spec.lora.rank", f"must be between 1 and 256, got {rank}")
    alpha = float(lora.get("alpha", 0.0)) or 2.0 * rank
    if alpha <= 0 or not alpha.is_integer():
        raise InvalidArgument("spec.lora.alpha", f"must be a positive whole number, got {alpha}")
    dropout = float(lora.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise InvalidArgument("spec.lora.dropout", f"must be in [0, 1), got {dropout}")
    modules = [str(m) for m in lora.get("target_modules", [])]
    return {
        "r": rank,
        "alpha": int(alpha),
        "dropout": dropout,
        "target_modules": modules or "all-linear",
    }


def resolve_base_model(session: Session, base_model: str) -> tuple[str, str]:
    """(model directory, registry version or "") of the spec's ``base_model``: a model
    directory, a registered full-weight policy version, or empty for the served policy."""
    if not base_model:
        row = session.scalar(
            select(ModelVersionRow).where(
                ModelVersionRow.kind == POLICY, ModelVersionRow.stage == "serving"
            )
        )
        if row is None:
            raise InvalidArgument(
                "spec.base_model",
                "is required while no policy is served: name a model directory or a "
                "registered policy version",
            )
    else:
        row = session.get(ModelVersionRow, base_model)
    if row is not None:
        if row.kind != POLICY or row.adapter_path:
            raise InvalidArgument(
                "spec.base_model", f"{row.version} is not a full-weight policy version"
            )
        return row.artifact_uri, row.version
    path = Path(base_model)
    if not (path / "config.json").is_file():
        raise InvalidArgument(
            "spec.base_model",
            f"{base_model!r} is neither a registered policy version nor a Hugging Face "
            "model directory",
        )
    return str(path.resolve()), ""


def check_spec(session: Session, spec: dict[str, Any]) -> dict[str, Any]:
    """Checks a reward_model spec (protobuf JSON form); returns the job's inputs."""
    if not spec.get("snapshot_id"):
        raise InvalidArgument(
            "spec.snapshot_id", "is required: the preference snapshot id or content hash"
        )
    if spec.get("resume_job_id"):
        raise InvalidArgument(
            "spec.resume_job_id", "reward_model jobs cannot resume yet; submit a new job"
        )
    base_dir, parent = resolve_base_model(session, str(spec.get("base_model", "")))
    return {
        "base_model_dir": base_dir,
        "parent_version": parent,
        "hyperparameters": parse_hyperparameters(
            dict(spec.get("hyperparameters", {})), int(spec.get("seed", 0))
        ),
        "lora": parse_lora(dict(spec.get("lora", {}))),
    }


def run_trainer(
    trainer: Callable[..., dict[str, Any]],
    hyper_class: Any,
    job_dir: Path,
    snapshot: Path,
    inputs: dict[str, Any],
    progress: ProgressFn,
) -> tuple[Path, dict[str, Any]]:
    """Runs a training function (reward model, SFT, DPO: they share one signature) on the
    job's snapshot export into ``<job_dir>/model``; (directory, manifest)."""
    from clinalign.reward.commands import read_snapshot
    from clinalign.reward.training import LoraSettings

    data = read_snapshot(snapshot)
    lora = inputs.get("lora")
    if lora and isinstance(lora.get("target_modules"), list):
        lora = {**lora, "target_modules": tuple(lora["target_modules"])}
    out = job_dir / MODEL_DIR
    manifest = trainer(
        data.records,
        data.snapshot_hash,
        Path(inputs["base_model_dir"]),
        out,
        hyper_class(**inputs["hyperparameters"]),
        lora=LoraSettings(**lora) if lora else None,
        parent_version=str(inputs.get("parent_version", "")),
        snapshot_hash_source=data.hash_source,
        progress=progress,
    )
    return out, manifest


def train(
    job_dir: Path, snapshot: Path, inputs: dict[str, Any], progress: ProgressFn
) -> tuple[Path, dict[str, Any]]:
    """Trains the reward model into ``<job_dir>/model``; (directory, manifest)."""
    from clinalign.reward.training import RewardHyperparameters, train_reward_model

    return run_trainer(
        train_reward_model, RewardHyperparameters, job_dir, snapshot, inputs, progress
    )


def write_snapshot(job_dir: Path, data: bytes, manifest_json: str) -> Path:
    """Writes the export and its manifest sidecar (see ``clinalign.reward.commands``)."""
    from clinalign.reward.commands import MANIFEST_SUFFIX

    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / SNAPSHOT_FILE
    path.write_bytes(data)
    if manifest_json:
        path.with_name(path.name + MANIFEST_SUFFIX).write_text(manifest_json)
    return path
