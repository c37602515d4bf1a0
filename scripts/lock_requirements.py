#!/usr/bin/env python3
"""Writes deploy/docker/requirements/<image>.lock: every transitive dependency of an image,
pinned with the hashes of its distributions (``uv pip compile --generate-hashes`` against
PyPI, for CPython 3.11 on x86_64 manylinux, the images' platform). The images install only
from these (install.sh: ``pip install --require-hashes --no-deps``).

    python scripts/lock_requirements.py          # rewrite the locks (needs PyPI)
    python scripts/lock_requirements.py console  # rewrite only these images' locks
    python scripts/lock_requirements.py --check  # exit 1 if a lock disagrees with its
                                                 # requirements (offline; the tests run it)

torch is left out of every lock (``torch-from-index.txt``): install.sh installs it first
from the PyTorch index of the image's variant, pinned to its exact version in torch.txt,
since those CPU and CUDA builds are not on PyPI and cannot be hashed from here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "deploy" / "docker" / "requirements"
IMAGES = (
    "generation",
    "reward",
    "preference",
    "trainer",
    "monitor",
    "console",
    "cds-hooks",
    "build",
)
UV = [sys.executable, "-m", "uv"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins(path: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` in a requirements file and those it
    includes with ``-r``."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins |= requirement_pins(path.parent / line[3:].strip())
        elif match := PIN.match(line):
            pins[_norm(match.group(1))] = match.group(2)
    return pins


def lock_pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of every package in a lock file."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            name = _norm(match.group(1))
            pins[name] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def problems(image: str) -> list[str]:
    lock = REQ / f"{image}.lock"
    if not lock.is_file():
        return [f"{lock.relative_to(ROOT)} is missing"]
    wanted = requirement_pins(REQ / f"{image}.txt")
    locked = lock_pins(lock)
    out = []
    for name, version in sorted(wanted.items()):
        if name == "torch":
            continue
        if name not in locked:
            out.append(f"{image}.lock lacks {name}=={version}")
        elif locked[name][0] != version:
            out.append(f"{image}.lock pins {name}=={locked[name][0]}, {image}.txt {version}")
    out += [f"{image}.lock: {n} has no hash" for n, (_, h) in sorted(locked.items()) if h == 0]
    if "torch" in locked:
        out.append(f"{image}.lock holds torch, which comes from the PyTorch index")
    return out


def compile_lock(image: str) -> None:
    subprocess.run(
        [
            *UV,
            "pip",
            "compile",
            f"{image}.txt",
            "--generate-hashes",
            "--python-version",
            "3.11",
            "--python-platform",
            "x86_64-manylinux_2_28",
            "--override",
            "torch-from-index.txt",
            "--index-url",
            "https://pypi.org/simple",
            "--quiet",
            "-o",
            f"{image}.lock",
        ],
        cwd=REQ,
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("images", nargs="*", help=f"only these of {', '.join(IMAGES)}")
    args = parser.parse_args()
    images = args.images or IMAGES
    if unknown := sorted(set(images) - set(IMAGES)):
        parser.error(f"unknown images {unknown}; the images are {', '.join(IMAGES)}")
    if not args.check:
        for image in images:
            compile_lock(image)
    found = [p for image in images for p in problems(image)]
    for problem in found:
        print(problem, file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
