"""Registration is race-free: two registrations of one kind at once get distinct versions
and neither touches the other's files; a crashed registration's leftover directory is
skipped, never reused or removed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from clinalign.common.db import Database
from clinalign.common.hashing import weights_hash
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.server import MIGRATIONS
from tests.conftest import reset_tables


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    reset_tables(database_url, registry.Base)
    database = Database(database_url, registry.Base, MIGRATIONS)
    database.create_schema()
    yield database
    database.dispose()
    reset_tables(database_url, registry.Base)


def _variant(tiny_model_dir: Path, where: Path, marker: str) -> Path:
    """A copy of the tiny model with distinguishable weights."""
    shutil.copytree(tiny_model_dir, where)
    (where / "extra.bin").write_bytes(marker.encode() * 64)
    return where


def test_two_registrations_at_once_get_distinct_versions(
    db: Database, tiny_model_dir: Path, tmp_path: Path, database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer: the second transaction waits for the first")
    reg = registry.Registry(tmp_path / "registry")
    first_src = _variant(tiny_model_dir, tmp_path / "a", "a")
    second_src = _variant(tiny_model_dir, tmp_path / "b", "b")
    # A registers and has not committed when B, seeing the same newest version, registers.
    with db.sessions.begin() as a:
        first = reg.register(a, first_src, "policy")
        with db.sessions.begin() as b:
            second = reg.register(b, second_src, "policy")
    assert (first.version, second.version) == ("policy-v1", "policy-v2")
    for mv, src in ((first, first_src), (second, second_src)):
        assert weights_hash(Path(mv.artifact_uri)) == weights_hash(src) == mv.weights_hash
    with db.sessions() as s:
        assert [v.version for v in reg.list(s, "policy", 10, 0)] == ["policy-v2", "policy-v1"]


def test_a_leftover_directory_is_skipped_not_removed(
    db: Database, tiny_model_dir: Path, tmp_path: Path
) -> None:
    reg = registry.Registry(tmp_path / "registry")
    leftover = tmp_path / "registry" / "policy-v1"
    leftover.mkdir(parents=True)
    (leftover / "partial.safetensors").write_bytes(b"left by a crash")
    with db.sessions.begin() as s:
        mv = reg.register(s, tiny_model_dir, "policy")
    assert mv.version == "policy-v2"
    assert (leftover / "partial.safetensors").read_bytes() == b"left by a crash"
    assert not list((tmp_path / "registry").glob(".staging-*"))
