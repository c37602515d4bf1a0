"""The reward-model commands the CLI mounts (``clinalign train reward-model``, ``clinalign
eval reward-model``): read a snapshot export, call the core, return what to print.

A snapshot export is the JSONL that ``PreferenceService.ExportSnapshot`` streams (kind
PREFERENCE, both splits, so every record carries its ``split``). The export itself does
not carry the snapshot's content hash; its lineage comes from a sidecar
``<export>.manifest.json`` holding the snapshot's manifest (``GetSnapshot``'s
``manifest_json``, which has ``content_hash``) when one sits next to it, and otherwise
from the SHA-256 of the file, which is ``ExportSnapshot``'s ``file_sha256``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from clinalign.common.artefacts import LoraSettings, ProgressFn
from clinalign.common.errors import InvalidArgument
from clinalign.trainer.methods.reward_model.evaluation import Report, evaluate_reward_model
from clinalign.trainer.methods.reward_model.training import (
    RewardHyperparameters,
    train_reward_model,
)

MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class SnapshotFile:
    records: list[dict[str, Any]]
    snapshot_hash: str
    hash_source: str  # "manifest" (the snapshot's content hash) or "file_sha256"


def load_snapshot_jsonl(path: Path) -> tuple[list[dict[str, Any]], str]:
    """(records, snapshot hash) of an export; see the module docstring for the hash."""
    snapshot = read_snapshot(path)
    return snapshot.records, snapshot.snapshot_hash


def read_snapshot(path: Path) -> SnapshotFile:
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument("snapshot", f"{path} is not a file; export one with ExportSnapshot")
    data = path.read_bytes()
    records = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidArgument(
                "snapshot", f"line {number} of {path} is not JSON: {err}"
            ) from err
        if not isinstance(record, dict):
            raise InvalidArgument("snapshot", f"line {number} of {path} is not a JSON object")
        records.append(record)
    sidecar = path.with_name(path.name + MANIFEST_SUFFIX)
    if sidecar.is_file():
        content_hash = json.loads(sidecar.read_text()).get("content_hash")
        if not content_hash:
            raise InvalidArgument("snapshot", f"{sidecar} has no content_hash")
        return SnapshotFile(records, str(content_hash), "manifest")
    return SnapshotFile(records, hashlib.sha256(data).hexdigest(), "file_sha256")


def train_command(
    snapshot: Path,
    base_model: Path,
    out: Path,
    *,
    lora_r: int = 0,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.0,
    parent_version: str = "",
    progress: ProgressFn | None = None,
    **hyper: Any,
) -> dict[str, Any]:
    """Train from an export; ``hyper`` holds ``RewardHyperparameters`` fields by name and
    ``lora_r > 0`` trains through a LoRA adapter of that rank. Returns the manifest."""
    known = {f.name for f in fields(RewardHyperparameters)}
    unknown = sorted(set(hyper) - known)
    if unknown:
        raise InvalidArgument(
            unknown[0], f"is not a hyperparameter; known: {', '.join(sorted(known))}"
        )
    lora = (
        LoraSettings(r=lora_r, alpha=lora_alpha or 2 * lora_r, dropout=lora_dropout)
        if lora_r > 0
        else None
    )
    data = read_snapshot(snapshot)
    manifest = train_reward_model(
        data.records,
        data.snapshot_hash,
        base_model,
        out,
        RewardHyperparameters(**hyper),
        lora=lora,
        parent_version=parent_version,
        snapshot_hash_source=data.hash_source,
        progress=progress,
    )
    return manifest


def eval_command(
    model: Path, snapshot: Path, baseline: Path | None = None, *, margin: float | None = None
) -> Report:
    """``margin``: the non-inferiority margin against ``baseline`` (required with one)."""
    data = read_snapshot(snapshot)
    return evaluate_reward_model(
        model, data.records, baseline, margin=margin, snapshot_hash=data.snapshot_hash
    )
