"""Build the embedded foundation model directory: corpus → tokenizer → pretraining → save.

The output is an ordinary Hugging Face model directory (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json with the chat template)
plus `clinalign_manifest.json`, which records the lineage: corpus hash, settings, seed,
loss curve, timings and library versions.

Writes are atomic: the model is built in a hidden sibling directory and renamed into
place, so a crash or Ctrl-C never leaves a half-written model at `out_dir`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from clinalign.common.prompts import CHAT_TEMPLATE, SPECIAL_TOKENS, format_prompt

from .corpus import Corpus, generate_corpus
from .presets import FOUNDATION, TINY, FoundationPreset
from .pretrain import ProgressFn, TrainResult, pretrain
from .tokenizer import train_tokenizer
from .vocab import data_sha256

log = logging.getLogger(__name__)

MANIFEST_NAME = "clinalign_manifest.json"
MANIFEST_KIND = "foundation"
FORMAT_VERSION = 1
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    MANIFEST_NAME,
)
MAX_THREADS = 8  # beyond this a model this small gains nothing from more threads


def bootstrap(
    out_dir: Path,
    *,
    seed: int = 0,
    force: bool = False,
    time_budget_s: float = 600.0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Build the default foundation model into `out_dir` and return its manifest.

    If `out_dir` already holds a complete model built with the same settings and seed,
    nothing is rebuilt and its manifest is returned, unless `force`. `time_budget_s`
    bounds the whole build; it is a safety net (the default preset finishes well inside
    it on two CPU cores) and is not part of the settings, so a build that was cut short
    on a slow machine is kept until `force`. `progress(step, total_steps, loss)` is
    called after every training step.
    """
    return build_foundation(
        out_dir,
        FOUNDATION,
        seed=seed,
        force=force,
        time_budget_s=time_budget_s,
        progress=progress,
    )


def build_tiny_model(out_dir: Path, *, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Build the test-fixture model: same code path and format, a few seconds on a CPU."""
    return build_foundation(out_dir, TINY, seed=seed, force=force, time_budget_s=120.0)


def settings_key(preset: FoundationPreset, seed: int) -> str:
    """Hash of everything that determines the built model (besides library versions)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "preset": preset.to_dict(),
        "seed": seed,
        "data_sha256": data_sha256(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest of a complete foundation model directory, or None."""
    if not all((model_dir / name).is_file() for name in REQUIRED_FILES):
        return None
    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        return None
    return manifest


def build_foundation(
    out_dir: Path,
    preset: FoundationPreset,
    *,
    seed: int = 0,
    force: bool = False,
    time_budget_s: float = 600.0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Build `preset` into `out_dir` (see `bootstrap`)."""
    out_dir = Path(out_dir)
    key = settings_key(preset, seed)
    existing = read_manifest(out_dir)
    if existing is not None and existing.get("settings_key") == key and not force:
        log.info("foundation model up to date", extra={"fields": {"path": str(out_dir)}})
        return existing
    _check_replaceable(out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    threads_before = torch.get_num_threads()
    torch.set_num_threads(_thread_count())
    try:
        manifest = _build(staging, preset, seed, key, time_budget_s, progress)
        _make_readable(staging)
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads_before)
    log.info(
        "foundation model built",
        extra={
            "fields": {
                "path": str(out_dir),
                "steps": manifest["steps"],
                "final_loss": manifest["final_loss"],
                "wall_s": manifest["wall_s"],
            }
        },
    )
    return manifest


def _build(
    staging: Path,
    preset: FoundationPreset,
    seed: int,
    key: str,
    time_budget_s: float,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + time_budget_s

    corpus = generate_corpus(seed, preset.corpus_bytes)
    t_corpus = time.monotonic()

    tokenizer = train_tokenizer(corpus.documents, preset.vocab_size)
    token_docs: list[list[int]] = tokenizer(list(corpus.documents))["input_ids"]
    # Set after encoding the corpus: whole documents may exceed it; training blocks do not.
    tokenizer.model_max_length = preset.max_position_embeddings
    corpus_tokens = sum(len(doc) for doc in token_docs)
    t_tokenizer = time.monotonic()

    result = pretrain(
        preset, tokenizer, token_docs, seed=seed, deadline=deadline, progress=progress
    )
    t_train = time.monotonic()

    model = result.model
    _save_model(model, tokenizer, staging)
    t_save = time.monotonic()

    parameters = sum(p.numel() for p in model.parameters())
    manifest: dict[str, Any] = {
        "kind": MANIFEST_KIND,
        "format_version": FORMAT_VERSION,
        "preset": preset.name,
        "seed": seed,
        "settings_key": key,
        # Summary figures, also found in the sections below.
        "parameters": parameters,
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "final_loss": round(result.final_loss, 4),
        "wall_s": round(time.monotonic() - started, 2),
        "settings": preset.to_dict(),
        "prompt_format": {
            "prompt": format_prompt("{question}"),
            "document": format_prompt("{question}") + "{answer}</s>",
            "chat_template": CHAT_TEMPLATE,
        },
        "corpus": _corpus_section(corpus, corpus_tokens),
        "tokenizer": _tokenizer_section(tokenizer),
        "model": {
            "architecture": type(model).__name__,
            "parameters": parameters,
            "config": json.loads(model.config.to_json_string()),
        },
        "training": _training_section(result, preset, time_budget_s),
        "timings_s": {
            "corpus": round(t_corpus - started, 2),
            "tokenizer": round(t_tokenizer - t_corpus, 2),
            "training": round(t_train - t_tokenizer, 2),
            "save": round(t_save - t_train, 2),
        },
        "versions": _versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    manifest["wall_s"] = round(time.monotonic() - started, 2)
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    return manifest


def _save_model(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, directory: Path
) -> None:
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=200,
    )
    model.save_pretrained(directory)
    _save_tokenizer(tokenizer, directory)


def _corpus_section(corpus: Corpus, tokens: int) -> dict[str, Any]:
    return {
        "sha256": corpus.sha256,
        "bytes": corpus.num_bytes,
        "documents": len(corpus.documents),
        "kinds": corpus.kind_counts(),
        "tokens": tokens,
        "data_sha256": data_sha256(),
    }


def _tokenizer_section(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "type": "byte-level BPE",
        "vocab_size": len(tokenizer),
        "special_tokens": {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS},
        "padding_side": tokenizer.padding_side,
        "adds_bos": False,
    }


def _training_section(
    result: TrainResult, preset: FoundationPreset, time_budget_s: float
) -> dict[str, Any]:
    return {
        "planned_steps": result.planned_steps,
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "epochs": round(result.tokens_seen / max(1, result.num_blocks * preset.context_length), 3),
        "first_loss": round(result.first_loss, 4),
        "final_loss": round(result.final_loss, 4),
        "loss_curve": [[int(s), round(v, 4)] for s, v in result.loss_curve],
        "budget_limited": result.budget_limited,
        # null: steps only (JSON has no infinity, and PostgreSQL's json type refuses it)
        "time_budget_s": time_budget_s if math.isfinite(time_budget_s) else None,
        "notes": result.notes,
        "bf16_autocast": result.bf16,
        "threads": torch.get_num_threads(),
    }


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _save_tokenizer(tokenizer: Any, directory: Path) -> None:
    # Keep the chat template inside tokenizer_config.json (not a separate .jinja file) and
    # name the generic fast-tokenizer class, so older transformers releases, such as
    # those in TGI or vLLM images, load the directory too.
    tokenizer.save_pretrained(directory, save_jinja_files=False)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text("utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n", "utf-8")


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything that is not a foundation model or an empty directory."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory; choose another path")
    if any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise FileExistsError(
            f"{out_dir} is not empty and holds no {MANIFEST_NAME}; refusing to replace it "
            "(choose an empty or new directory)"
        )


def _make_readable(directory: Path) -> None:
    # mkdtemp creates 0700 and some writers use 0600; a model directory is read by other
    # processes and containers (often another user), so give it ordinary permissions.
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    # rename() cannot replace a non-empty directory, so move the old one aside first;
    # between the two renames `out_dir` is briefly absent, never half-written.
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        old.rmdir()
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out_dir)


def _thread_count() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, MAX_THREADS))
