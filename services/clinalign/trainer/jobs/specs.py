"""What every training job kind shares at submission and at run time: reading the spec's
string maps into typed hyperparameters and LoRA settings, resolving the base model to a
directory and registry version, resuming a failed or cancelled job, and running a
training method on the job's snapshot export.

Submission resolves everything the run depends on into the job's ``inputs``, so a job
runs what was accepted even if the served policy changes while it waits. Every run
checkpoints into ``<job_dir>/checkpoints`` (the latest checkpoint is kept, and removed once
the run has trained). A spec with ``resume_job_id`` names a FAILED or CANCELLED job of the
same kind: the new job takes that job's inputs (base model, hyperparameters, LoRA; the spec
must name the same snapshot) and continues from the newest checkpoint the job, or a job it
resumed in turn, left. The job kinds themselves are ``supervised`` (reward_model, sft,
dpo) and ``ppo_job``.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinalign.common.artefacts import NORMALISATION_FILE, POLICY, REWARD, ProgressFn
from clinalign.common.errors import FailedPrecondition, InvalidArgument, NotFound
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.registry.versions import ModelVersionRow

SNAPSHOT_FILE = "snapshot.jsonl"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
RESUMABLE = frozenset({jobs.FAILED, jobs.CANCELLED})
# Spec fields whose values a resumed job takes from the job it resumes.
_INHERITED = (
    "base_model",
    "hyperparameters",
    "lora",
    "seed",
    "prompt_set",
    "reward_model_version",
)


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


# Upper bounds on the sizes that drive a job's cost, whichever job kind has them; every
# other number is held to _ANY_NUMBER and must be finite. A job asking for more is a
# caller's mistake (or an attempt to take the GPU pool), refused before it is queued.
_CAPS: dict[str, int] = {
    "max_length": 32_768,
    "max_prompt_length": 32_768,
    "response_length": 8_192,
    "norm_max_new_tokens": 8_192,
    "batch_size": 4_096,
    "eval_batch_size": 4_096,
    "rollout_batch_size": 4_096,
    "samples_per_prompt": 64,
    "minibatches": 1_024,
    "gradient_accumulation_steps": 1_024,
    "iterations": 1_000_000,
    "ppo_epochs": 100,
    "epochs": 1_000,
    "norm_prompts": 100_000,
    "checkpoint_every": 1_000_000,
    "checkpoint_steps": 1_000_000,
    "seed": 2**32 - 1,
}
_ANY_NUMBER = 1_000_000_000
_MAX_TEXT = 256


def _check_bounds(where: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(where, f"must be a finite number, got {value}")
    if isinstance(value, int | float):
        cap = _CAPS.get(key, _ANY_NUMBER)
        if abs(value) > cap:
            shown = value if isinstance(value, int) else f"{value:g}"
            raise InvalidArgument(where, f"must be at most {cap:,} in magnitude, got {shown}")
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        raise InvalidArgument(where, f"is over {_MAX_TEXT} characters")


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
        if len(text) > _MAX_TEXT:
            raise InvalidArgument(where, f"is over {_MAX_TEXT} characters")
        try:
            parsed[key] = parser(text)
        except ValueError:
            kind = annotation.removesuffix("| None").strip()
            raise InvalidArgument(where, f"{text[:40]!r} is not a valid {kind}") from None
        _check_bounds(where, key, parsed[key])
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


def resolve_base_model(
    session: Session, base_model: str, *, reward: bool = False
) -> tuple[str, str]:
    """(model directory, registry version or "") of the spec's ``base_model``: a model
    directory, a registered full-weight policy version, or empty for the served policy.
    With ``reward`` (a reward_model job) it may also be a registered full-weight reward
    version or a reward-model directory, which the job continues training."""
    kinds = "policy or reward" if reward else "policy"
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
                f"registered {kinds} version",
            )
    else:
        row = session.get(ModelVersionRow, base_model)
    if row is not None:
        if row.kind not in ((POLICY, REWARD) if reward else (POLICY,)) or row.adapter_path:
            raise InvalidArgument(
                "spec.base_model", f"{row.version} is not a full-weight {kinds} version"
            )
        return row.artifact_uri, row.version
    path = Path(base_model)
    if not _is_model_dir(path):
        raise InvalidArgument(
            "spec.base_model",
            f"{base_model!r} is neither a registered {kinds} version nor a Hugging Face "
            "model directory",
        )
    if not reward and (path / NORMALISATION_FILE).is_file():
        raise InvalidArgument(
            "spec.base_model", f"{base_model!r} is a reward model, not a policy to start from"
        )
    return str(path.resolve()), ""


def resume_inputs(session: Session, spec: dict[str, Any], kind: str) -> dict[str, Any]:
    """The inputs of a job that resumes ``spec["resume_job_id"]``: the resumed job's, with
    the chain of jobs whose checkpoints it may continue from (newest first). Refuses a job
    that is missing, of another kind or not FAILED or CANCELLED, a different snapshot, and
    settings that differ from the resumed job's (a resumed job trains what it trained)."""
    old_id = str(spec["resume_job_id"])
    try:
        old = jobs.get(session, old_id)
    except NotFound:
        raise NotFound("job", old_id, field="spec.resume_job_id") from None
    if old.kind != kind:
        raise InvalidArgument(
            "spec.resume_job_id",
            f"job {old_id} is a {old.kind} job; a {kind} job resumes a {kind} job",
        )
    if old.state not in RESUMABLE:
        raise InvalidArgument(
            "spec.resume_job_id",
            f"job {old_id} is {old.state}; only a failed or cancelled job can be resumed",
        )
    snapshot = str(old.spec.get("snapshot_id", ""))
    if str(spec.get("snapshot_id", "")) != snapshot:
        raise InvalidArgument(
            "spec.snapshot_id",
            f"must be {snapshot!r}, the snapshot of the resumed job {old_id}",
        )
    for name in _INHERITED:
        if spec.get(name) and spec.get(name) != old.spec.get(name):
            raise InvalidArgument(
                f"spec.{name}",
                f"differs from the resumed job {old_id}'s; leave it empty to train what that "
                "job trained, or submit a new job",
            )
    chain = [old_id, *old.inputs.get("resume_chain", [])]
    return {**old.inputs, "resume_job_id": old_id, "resume_chain": chain}


def resume_checkpoint(
    job_dir: Path,
    inputs: dict[str, Any],
    last_checkpoint: Callable[[Path], Path | None] | None = None,
) -> Path | None:
    """The checkpoint a resuming job continues from: the newest complete one of the first
    job in its resume chain that left one (job directories are siblings); None for a job
    that does not resume. ``last_checkpoint`` finds the newest complete checkpoint in a
    directory (the HF Trainer's layout by default)."""
    if last_checkpoint is None:
        from clinalign.common.training import last_checkpoint as hf_last_checkpoint

        last_checkpoint = hf_last_checkpoint
    chain = [str(j) for j in inputs.get("resume_chain") or [inputs.get("resume_job_id")] if j]
    for old_id in chain:
        found = last_checkpoint(job_dir.parent / old_id / CHECKPOINT_DIR)
        if found is not None:
            return found
    if chain:
        raise FailedPrecondition(f"job {chain[0]} left no checkpoint; submit a new job")
    return None


def run_trainer(
    trainer: Callable[..., dict[str, Any]],
    hyper_class: Any,
    job_dir: Path,
    snapshot: Path,
    inputs: dict[str, Any],
    progress: ProgressFn,
) -> tuple[Path, dict[str, Any]]:
    """Runs a training function (reward model, SFT, DPO: they share one signature) on the
    job's snapshot export into ``<job_dir>/model``, checkpointing into
    ``<job_dir>/checkpoints`` and continuing from the resumed job's checkpoint, if any;
    (directory, manifest). The checkpoints go once the model is written."""
    from clinalign.common.artefacts import LoraSettings
    from clinalign.trainer.methods.reward_model.commands import read_snapshot

    resume_from = resume_checkpoint(job_dir, inputs)
    data = read_snapshot(snapshot)
    lora = inputs.get("lora")
    if lora and isinstance(lora.get("target_modules"), list):
        lora = {**lora, "target_modules": tuple(lora["target_modules"])}
    out, checkpoints = job_dir / MODEL_DIR, job_dir / CHECKPOINT_DIR
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
        checkpoint_dir=checkpoints,
        resume_from=resume_from,
    )
    # A trained job is not resumed (only failed and cancelled ones are); its optimiser
    # state would only hold disk.
    shutil.rmtree(checkpoints, ignore_errors=True)
    return out, manifest


def write_snapshot(
    job_dir: Path, data: bytes, manifest_json: str, name: str = SNAPSHOT_FILE
) -> Path:
    """Writes the export and its manifest sidecar (see
    ``clinalign.trainer.methods.reward_model.commands``)."""
    from clinalign.trainer.methods.reward_model.commands import MANIFEST_SUFFIX

    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / name
    path.write_bytes(data)
    if manifest_json:
        path.with_name(path.name + MANIFEST_SUFFIX).write_text(manifest_json)
    return path


def _is_model_dir(path: Path) -> bool:
    """A Hugging Face model directory; False for a name the file system refuses (too
    long, a NUL byte): a caller's mistake, never INTERNAL."""
    try:
        return (path / "config.json").is_file()
    except (OSError, ValueError):
        return False
