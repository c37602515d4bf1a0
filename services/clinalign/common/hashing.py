"""Content hashes that name exactly what produced an artefact."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def weights_hash(model_dir: Path) -> str:
    """SHA-256 over a model directory's weight files, in name order, names included."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def version_hash(directory: Path, base_model: Path | None) -> str:
    """The weights hash a registered version records, which replicas check before serving
    it: of its weight files, or for a LoRA adapter of base and adapter together (what is
    served is both)."""
    if base_model is None:
        return weights_hash(directory)
    both = f"{weights_hash(base_model)}:{weights_hash(directory)}"
    return hashlib.sha256(both.encode()).hexdigest()
