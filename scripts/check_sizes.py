"""Fails when a module under services/ is over MAX_MODULE_LINES lines or a function over
MAX_FUNCTION_LINES lines (`make lint`). Generated code (``*/v1/``) and database migrations
are left out. ruff has no function-length rule; its C901 (complexity) and PLR0915
(statements) checks, configured in pyproject.toml, sit beside this one.

    python scripts/check_sizes.py [ROOT]
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80  # from the ``def`` line (decorators aside) to the last line


def sources(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if "v1" in parts or "migrations" in parts:
            continue
        yield path


def problems(root: Path) -> Iterator[str]:
    for path in sources(root):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + (not text.endswith("\n") and bool(text))
        if lines > MAX_MODULE_LINES:
            yield f"{path}: {lines} lines (at most {MAX_MODULE_LINES} a module)"
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    yield (
                        f"{path}:{node.lineno}: {node.name} is {length} lines "
                        f"(at most {MAX_FUNCTION_LINES} a function)"
                    )


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path("services")
    found = list(problems(root))
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
