"""Token authentication and the per-RPC role table."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from clinalign.common.auth import (
    Principal,
    Role,
    TokenAuthenticator,
    TokenEntry,
    authorize,
    generate_tokens,
    load_tokens,
    roles,
)
from clinalign.common.errors import PermissionDenied, Unauthenticated

TABLE = {"/x.v1.S/Read": roles(Role.CLINICIAN), "/x.v1.S/Write": roles(Role.ML_ENGINEER)}


@pytest.fixture
def auth() -> TokenAuthenticator:
    return TokenAuthenticator(
        [TokenEntry("dr-a", Role.CLINICIAN, "tok-clin"), TokenEntry("ops", Role.ADMIN, "tok-adm")]
    )


def test_valid_token_resolves_to_its_principal(auth: TokenAuthenticator) -> None:
    assert auth.authenticate("Bearer tok-clin") == Principal("dr-a", Role.CLINICIAN)
    assert auth.authenticate("bearer tok-adm").role is Role.ADMIN


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing `authorization"),
        ("", "missing `authorization"),
        ("Basic dXNlcjpwdw==", "must be `Bearer <token>`"),
        ("Bearer ", "must be `Bearer <token>`"),
        ("Bearer nope", "unknown bearer token"),
    ],
)
def test_bad_credentials_are_unauthenticated(
    auth: TokenAuthenticator, header: str | None, message: str
) -> None:
    with pytest.raises(Unauthenticated, match=message):
        auth.authenticate(header)


def test_role_table_admits_listed_roles_and_admin() -> None:
    clin, admin = Principal("a", Role.CLINICIAN), Principal("b", Role.ADMIN)
    authorize(clin, "/x.v1.S/Read", TABLE)
    authorize(admin, "/x.v1.S/Write", TABLE)
    with pytest.raises(PermissionDenied, match=r"role 'clinician' may not call /x\.v1\.S/Write"):
        authorize(clin, "/x.v1.S/Write", TABLE)


def test_rpc_missing_from_table_is_denied_even_to_admin() -> None:
    with pytest.raises(PermissionDenied, match="not open to any role"):
        authorize(Principal("b", Role.ADMIN), "/x.v1.S/Other", TABLE)


def test_generated_tokens_file_is_private_and_has_every_role(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    entries = generate_tokens(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {e.role for e in entries} == set(Role)
    assert len({e.token for e in entries}) == len(entries)
    assert load_tokens(path) == entries


def test_tokens_file_with_unknown_role_names_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"principal": "x", "role": "nurse", "token": "t"}]}))
    with pytest.raises(ValueError, match=r"tokens\[0\] is invalid"):
        load_tokens(path)
