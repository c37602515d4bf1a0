"""The documentation stays true: the site builds strictly, the settings page is generated
from the code, and every setting, CLI command, make target and metric is named in the
README or on the site."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from pydantic_settings import BaseSettings
from typer import Typer

from clinalign.cli import app
from clinalign.cli.stack import FRONT_DOORS, SERVICES
from clinalign.common.config import CommonSettings
from clinalign.common.deid import DeidSettings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SETTINGS_PAGE = (ROOT / "docs" / "settings.md").read_text()
# Everything a reader can find: the README and every page of the site.
ALL_DOCS = "\n".join([README, *(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))])


def _settings_script() -> ModuleType:
    path = ROOT / "scripts" / "settings_table.py"
    spec = importlib.util.spec_from_file_location("settings_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_builds_strictly(tmp_path: Path) -> None:
    # strict: a broken link or anchor, or a page missing from nav, fails the build
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert (tmp_path / "settings" / "index.html").is_file()


def test_settings_page_is_generated_from_the_code() -> None:
    assert _settings_script().render() == SETTINGS_PAGE, (
        "docs/settings.md is stale: run .venv/bin/python scripts/settings_table.py"
    )


def test_every_setting_is_on_the_settings_page() -> None:
    classes: list[type[BaseSettings]] = [CommonSettings, DeidSettings]
    for cls in [*classes, *(c for _, c in SERVICES.values()), *FRONT_DOORS.values()]:
        prefix = cls.model_config.get("env_prefix", "")
        for name in cls.model_fields:
            variable = f"`{prefix}{name.upper()}`"
            assert variable in SETTINGS_PAGE, f"{variable} is not in docs/settings.md"


def test_quick_start_has_exactly_the_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make \w+", quick, flags=re.M)
    assert commands == ["make demo", "make test"]


def test_readme_is_short_and_its_links_resolve() -> None:
    assert len(README.splitlines()) < 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def _command_names(typer_app: Typer, prefix: str) -> list[str]:
    names = []
    for command in typer_app.registered_commands:
        callback = command.callback.__name__.replace("_", "-") if command.callback else ""
        names.append(f"{prefix} {command.name or callback}")
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        names += _command_names(group.typer_instance, f"{prefix} {group.name}")
    return names


def test_every_cli_command_is_documented() -> None:
    names = _command_names(app, "clinalign")
    assert "clinalign jobs submit" in names  # the walk reaches the groups' commands
    missing = [name for name in names if name not in ALL_DOCS]
    assert not missing, f"commands named nowhere in README.md or docs/: {missing}"


def test_every_make_target_is_documented() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z-]+):.*##", makefile, flags=re.M)
    assert "docs" in targets
    missing = [t for t in targets if f"make {t}" not in ALL_DOCS]
    assert not missing, f"make targets named nowhere in README.md or docs/: {missing}"


_METRIC = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|GaugeMetricFamily|CounterMetricFamily)\(\s*\"([a-z_:]+)\""
)


def test_every_metric_is_documented() -> None:
    found: dict[str, str] = {}
    for path in (ROOT / "services" / "clinalign").rglob("*.py"):
        if "/v1/" in path.as_posix():
            continue
        for kind, name in _METRIC.findall(path.read_text()):
            # prometheus_client exposes a Counter as <name>_total
            found[f"{name}_total" if kind == "Counter" else name] = str(path.relative_to(ROOT))
    assert "rpc_server_requests_total" in found  # the scan sees the shared metrics
    missing = {
        name: where
        for name, where in found.items()
        if not re.search(rf"`{name}[`{{]", ALL_DOCS)  # `name` or `name{labels}`
    }
    assert not missing, f"metrics named nowhere in docs/: {missing}"
