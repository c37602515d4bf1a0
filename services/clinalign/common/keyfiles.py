"""Secret files a process makes for itself on first start (a signing key, a session key,
the audit keys): read when they exist, else made and written owner-only (mode 0600),
created exclusively so an existing file is never overwritten."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The bytes in ``path``; when it does not exist, ``make()``'s, written there first."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data
