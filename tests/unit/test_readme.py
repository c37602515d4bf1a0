"""The README stays true: every setting, make target and CLI command it must name."""

from __future__ import annotations

import re
from pathlib import Path

from clinalign.cli import app
from clinalign.cli.stack import SERVICES
from clinalign.common.config import CommonSettings
from clinalign.common.deid import DeidSettings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    for cls in [CommonSettings, DeidSettings, *(c for _, c in SERVICES.values())]:
        prefix = cls.model_config.get("env_prefix", "")
        for name in cls.model_fields:
            assert f"`{prefix}{name.upper()}`" in README, f"{prefix}{name.upper()} undocumented"


def test_quick_start_has_exactly_the_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make \w+", quick, flags=re.M)
    assert commands == ["make demo", "make test"]


def test_every_cli_command_and_make_target_is_documented() -> None:
    for command in app.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else "")
        assert f"clinalign {name}" in README, name
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^([a-z-]+):.*##", makefile, flags=re.M):
        assert f"make {target}" in README, target
