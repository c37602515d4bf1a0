"""Where a registered version's files live: ``<registry>/<version>/``, copied there at
registration, made read-only, and claimed race-free (``claim_directory``)."""

from __future__ import annotations

import shutil
import stat
import uuid
from pathlib import Path


def make_read_only(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def claim_directory(root: Path, kind: str, seq: int, source: Path) -> tuple[int, Path]:
    """The first free version of ``kind`` from number ``seq`` on, with ``source`` copied
    into its directory.

    Race-free across processes: the copy goes to a staging directory of its own, then
    is renamed onto the version's directory, which fails if that exists. A registration
    running beside this one (same next number, not yet committed) or the leftover of one
    that crashed therefore makes this one take the number after, and no registration
    ever removes or overwrites another's files."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(source, staging)
    try:
        while True:
            target = root / f"{kind}-v{seq}"
            try:
                staging.rename(target)  # atomic; refused when target exists
            except OSError:
                if not target.exists():
                    raise
                seq += 1
                continue
            make_read_only(target)
            return seq, target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
