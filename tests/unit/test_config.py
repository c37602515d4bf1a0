"""Settings come from CLINALIGN_* variables, typed and validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from clinalign.cli.stack import FRONT_DOORS, SERVICES, env_name
from clinalign.common.config import CommonSettings
from clinalign.generation.config import GenerationSettings


def test_defaults_follow_the_design_port_table(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*SERVICES, *FRONT_DOORS]:
        monkeypatch.delenv(f"CLINALIGN_{env_name(name)}_PORT", raising=False)
        monkeypatch.delenv(f"CLINALIGN_{env_name(name)}_METRICS_PORT", raising=False)
    ports = {name: (cls().port, cls().metrics_port) for name, (_, cls) in SERVICES.items()}
    ports |= {name: (cls().port, cls().metrics_port) for name, cls in FRONT_DOORS.items()}
    assert ports == {
        "generation": (50051, 9101),
        "reward": (50052, 9102),
        "preference": (50053, 9103),
        "trainer": (50054, 9104),
        "monitor": (50055, 9105),
        "console": (8080, 9106),
        "cds-hooks": (8081, 9107),
    }


def test_environment_overrides_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINALIGN_DATA_DIR", "/srv/clinalign")
    monkeypatch.setenv("CLINALIGN_OTEL_ENABLED", "true")
    monkeypatch.setenv("CLINALIGN_GENERATION_PORT", "6001")
    common, gen = CommonSettings(), GenerationSettings()
    assert common.data_dir == Path("/srv/clinalign")
    assert common.otel_enabled is True
    assert common.resolved_tokens_file == Path("/srv/clinalign/tokens.json")
    assert gen.port == 6001


def test_invalid_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINALIGN_GENERATION_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        GenerationSettings()


def test_every_setting_is_documented() -> None:
    for cls in [CommonSettings, *(c for _, c in SERVICES.values()), *FRONT_DOORS.values()]:
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description"
