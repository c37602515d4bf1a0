"""`clinalign tokens new|show`: the tokens file an operator puts in a Kubernetes Secret."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from clinalign.cli import app
from clinalign.common.auth import ALL_ROLES, SERVICE_NAMES, TokenAuthenticator, load_tokens


def test_new_writes_one_private_principal_per_role_and_prints_no_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    result = CliRunner().invoke(app, ["tokens", "new", str(path)])
    assert result.exit_code == 0, result.output
    entries = load_tokens(path)
    assert {e.role for e in entries} == ALL_ROLES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert all(e.token not in result.output for e in entries)
    auth = TokenAuthenticator(entries)
    assert all(auth.authenticate(f"Bearer {e.token}").role == e.role for e in entries)


def test_new_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    runner = CliRunner()
    assert runner.invoke(app, ["tokens", "new", str(path)]).exit_code == 0
    before = path.read_text()
    refused = runner.invoke(app, ["tokens", "new", str(path)])
    assert refused.exit_code == 1 and "--force" in refused.output
    assert path.read_text() == before
    assert runner.invoke(app, ["tokens", "new", str(path), "--force"]).exit_code == 0
    assert path.read_text() != before


def test_each_service_has_a_credential_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    CliRunner().invoke(app, ["tokens", "new", str(path)])
    services = {e.principal: e.token for e in load_tokens(path) if e.role.value == "service"}
    # and one integration account (local-service), held by no ClinAlign service
    assert set(services) == {f"svc-{name}" for name in SERVICE_NAMES} | {"local-service"}
    assert len(set(services.values())) == len(services)


def test_show_prints_a_principals_or_a_roles_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    runner = CliRunner()
    runner.invoke(app, ["tokens", "new", str(path)])
    entries = {e.principal: e for e in load_tokens(path)}
    shown = runner.invoke(app, ["tokens", "show", str(path), "--principal", "svc-monitor"])
    assert shown.exit_code == 0 and shown.output.strip() == entries["svc-monitor"].token
    admin = runner.invoke(app, ["tokens", "show", str(path), "--role", "admin"])
    assert admin.output.strip() == entries["local-admin"].token
    both = runner.invoke(app, ["tokens", "show", str(path)])
    assert both.exit_code == 2 and "exactly one of --role and --principal" in both.output
    missing = runner.invoke(app, ["tokens", "show", str(tmp_path / "none.json"), "--role", "admin"])
    assert missing.exit_code == 1 and "not found" in missing.output


def test_the_verification_file_holds_digests_that_verify_and_no_token(tmp_path: Path) -> None:
    path, verify = tmp_path / "tokens.json", tmp_path / "verify.json"
    runner = CliRunner()
    runner.invoke(app, ["tokens", "new", str(path)])
    done = runner.invoke(app, ["tokens", "verify-file", str(path), str(verify)])
    assert done.exit_code == 0, done.output
    entries = load_tokens(path)
    text = verify.read_text()
    assert not any(e.token in text for e in entries)
    server = TokenAuthenticator(load_tokens(verify))
    for e in entries:
        assert server.authenticate(f"Bearer {e.token}").name == e.principal
