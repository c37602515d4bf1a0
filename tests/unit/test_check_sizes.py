"""scripts/check_sizes.py, which `make lint` runs: it names each module over 500 lines and
each function over 80, and leaves generated stubs and migrations alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_sizes", ROOT / "scripts/check_sizes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function(name: str, body_lines: int) -> str:
    return f"def {name}() -> None:\n" + "    x = 1\n" * (body_lines - 1)


def test_long_modules_and_functions_are_named_and_generated_code_is_not(tmp_path: Path) -> None:
    sizes = _script()
    pkg = tmp_path / "clinalign" / "svc"
    (pkg / "v1").mkdir(parents=True)
    (pkg / "migrations").mkdir()
    (pkg / "ok.py").write_text(_function("short", 80))
    (pkg / "long_function.py").write_text(_function("short", 10) + _function("long", 81))
    (pkg / "long_module.py").write_text("x = 1\n" * 501)
    for generated in (pkg / "v1" / "svc_pb2.py", pkg / "migrations" / "0001.py"):
        generated.write_text("x = 1\n" * 600 + _function("long", 200))
    found = sorted(sizes.problems(tmp_path))
    assert len(found) == 2, found
    assert "long_function.py:11: long is 81 lines (at most 80 a function)" in found[0]
    assert "long_module.py: 501 lines (at most 500 a module)" in found[1]
    assert sizes.main([str(tmp_path)]) == 1
    assert sizes.main([str(ROOT / "services")]) == 0  # today's tree is within the limits
