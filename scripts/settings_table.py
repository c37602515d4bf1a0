"""Prints the README's settings tables from the settings classes, so the two never drift
(tests/unit/test_readme.py checks every variable is documented)."""

from __future__ import annotations

from pydantic_settings import BaseSettings

from clinalign.common.config import CommonSettings
from clinalign.common.deid import DeidSettings
from clinalign.cli.stack import SERVICES


def rows(cls: type[BaseSettings]) -> list[str]:
    prefix = cls.model_config.get("env_prefix", "")
    out = []
    for name, field in cls.model_fields.items():
        default = field.default
        shown = "—" if default is None else f"`{default}`"
        out.append(f"| `{prefix}{name.upper()}` | {shown} | {field.description} |")
    return out


def main() -> None:
    print("| variable | default | meaning |\n| --- | --- | --- |")
    print("\n".join(rows(CommonSettings)))
    for name, (_, cls) in SERVICES.items():
        print(f"\n**{name}**\n\n| variable | default | meaning |\n| --- | --- | --- |")
        print("\n".join(rows(cls)))
    print("\n**de-identification** (preference store, monitor, `clinalign deid`)\n")
    print("| variable | default | meaning |\n| --- | --- | --- |")
    print("\n".join(rows(DeidSettings)))


if __name__ == "__main__":
    main()
