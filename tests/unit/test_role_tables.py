"""Every RPC's role table in code and the roles its proto comment promises agree, so the
contract a caller reads is the one the server enforces (deny by default: an RPC missing
from a table is open to no one)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from clinalign.common.auth import Role

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("generation", "reward", "preference", "trainer", "monitor")
_NAMES = {r.value for r in Role}
_PAGE_ORDER = (
    Role.EHR_CLIENT,
    Role.CLINICIAN,
    Role.CLINICAL_LEAD,
    Role.ML_ENGINEER,
    Role.SERVICE,
    Role.ADMIN,
)


def documented_roles(proto: str) -> dict[str, frozenset[Role]]:
    """RPC name -> the roles named after ``Roles:`` in the comment above it (text in
    parentheses is commentary, not a role)."""
    out: dict[str, frozenset[Role]] = {}
    comment: list[str] = []
    for line in proto.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            comment.append(stripped[2:].strip())
            continue
        rpc = re.match(r"rpc (\w+)\(", stripped)
        if rpc:
            text = " ".join(comment)
            if "Roles:" in text:
                tail = text.split("Roles:", 1)[1]
                tail = re.sub(r"\([^)]*\)", "", tail).split(".", 1)[0]
                out[rpc.group(1)] = (
                    frozenset(Role)
                    if tail.strip().startswith("any authenticated role")
                    else frozenset(
                        Role(w) for w in re.findall(r"[a-z][a-z-]*", tail) if w in _NAMES
                    )
                )
        comment = []
    return out


@pytest.mark.parametrize("service", SERVICES)
def test_proto_comments_name_the_roles_the_server_admits(service: str) -> None:
    table = importlib.import_module(f"clinalign.{service}.servicer").ROLES
    proto = (ROOT / "protos" / "clinalign" / service / "v1" / f"{service}.proto").read_text()
    documented = documented_roles(proto)
    enforced = {method.rsplit("/", 1)[1]: allowed for method, allowed in table.items()}
    assert set(documented) == set(enforced), "every RPC documents its roles"
    wrong = {
        rpc: (sorted(documented[rpc]), sorted(enforced[rpc]))
        for rpc in enforced
        if documented[rpc] != enforced[rpc]
    }
    assert not wrong, f"proto comment vs role table: {wrong}"


@pytest.mark.parametrize("service", SERVICES)
def test_the_security_page_shows_each_rpc_with_its_roles(service: str) -> None:
    page = (ROOT / "docs" / "security.md").read_text()
    header = "| RPC | " + " | ".join(r.value for r in _PAGE_ORDER) + " |"
    section = page.split(f"### {service}\n", 1)[1].split("\n\n##", 1)[0]
    assert header in section
    table = importlib.import_module(f"clinalign.{service}.servicer").ROLES
    for method, allowed in table.items():
        cells = " | ".join("✓" if r in allowed else "" for r in _PAGE_ORDER)
        row = f"| `{method.rsplit('/', 1)[1]}` | {cells} |"
        assert row in section, f"docs/security.md lacks or disagrees on: {row}"


@pytest.mark.parametrize("service", SERVICES)
def test_every_rpc_open_to_services_names_which_services(service: str) -> None:
    from clinalign.common.auth import SERVICE_NAMES

    module = importlib.import_module(f"clinalign.{service}.servicer")
    open_to_services = {m for m, allowed in module.ROLES.items() if Role.SERVICE in allowed}
    assert set(module.SERVICE_CALLERS) == open_to_services
    for method, callers in module.SERVICE_CALLERS.items():
        assert callers <= set(SERVICE_NAMES), method
