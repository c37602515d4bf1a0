"""The console's sessions (encrypted cookies with two clocks), CSRF tokens, PKCE and the
assertions it signs for the development sign-in."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import jwt
import pytest

from clinalign.common.assertions import AssertionSigner, load_signing_key, public_jwk
from clinalign.common.auth import Principal, Role
from clinalign.common.delegation import Delegation, load_front_door_keys
from clinalign.common.errors import PermissionDenied
from clinalign.console.sessions import Session, Sessions, csrf_ok, load_key
from clinalign.console.signin import pkce_pair

NOW = 1_800_000_000


def _sessions(tmp_path: Path) -> Sessions:
    return Sessions(load_key(tmp_path / "session.key"), idle_timeout_s=900, max_age_s=3600)


def _session(**kw: object) -> Session:
    base = {"subject": "u-alice", "name": "Alice", "roles": ("clinician",), "issuer": "dev"}
    return Session(**{**base, "started": NOW, "seen": NOW, **kw})  # type: ignore[arg-type]


def test_a_sealed_session_opens_until_idle_or_too_old(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    session = _session()
    sealed = sessions.seal(session)
    assert "u-alice" not in sealed  # encrypted, not merely signed
    assert sessions.open(sealed, now=NOW + 899) == session
    assert sessions.open(sealed, now=NOW + 901) is None  # idle too long
    touched = sessions.seal(_session(seen=NOW + 3300))
    assert sessions.open(touched, now=NOW + 3700) is None  # past its maximum age
    expiring = sessions.seal(_session(token="a.b.c", token_exp=NOW + 60))
    assert sessions.open(expiring, now=NOW + 61) is None  # the person's token expired


@pytest.mark.parametrize("value", ["", "garbage", None])
def test_a_missing_or_forged_cookie_is_no_session(tmp_path: Path, value: str | None) -> None:
    assert _sessions(tmp_path).open(value, now=NOW) is None


def test_a_cookie_sealed_with_another_key_or_tampered_with_is_refused(tmp_path: Path) -> None:
    ours, theirs = _sessions(tmp_path / "a"), _sessions(tmp_path / "b")
    sealed = theirs.seal(_session())
    assert ours.open(sealed, now=NOW) is None
    mine = ours.seal(_session())
    flipped = mine[:20] + ("A" if mine[20] != "A" else "B") + mine[21:]
    assert ours.open(flipped, now=NOW) is None


def test_the_session_key_is_made_once_owner_only_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "k" / "session.key"
    first = load_key(path)
    assert load_key(path) == first and path.stat().st_mode & 0o777 == 0o600


def test_csrf_tokens_compare_exactly() -> None:
    session = _session()
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, "")
    assert not csrf_ok(session, session.csrf[:-1])


def test_pkce_challenge_is_the_s256_of_the_verifier() -> None:
    verifier, challenge = pkce_pair()
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert 43 <= len(verifier) <= 128  # RFC 7636 section 4.1
    assert pkce_pair()[0] != verifier


def test_the_services_accept_the_consoles_assertion_for_a_person_only(tmp_path: Path) -> None:
    key = load_signing_key(tmp_path / "console.jwk")
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"console": public_jwk(key)}))
    delegation = Delegation(None, load_front_door_keys(keys_file))
    console = Principal("svc-console", Role.SERVICE)
    signer = AssertionSigner(key, "svc-console")
    person = delegation.person(console, signer.assertion("u-alice", ("clinician",)))
    assert (person.name, person.role, person.via) == ("u-alice", Role.CLINICIAN, "svc-console")
    assert signer.assertion("u-alice", ("clinician",)) == signer.assertion(
        "u-alice", ("clinician",)
    )
    claims = jwt.decode(
        signer.assertion("u-bob", ("clinician",)), options={"verify_signature": False}
    )
    assert claims["exp"] - claims["iat"] <= 300 and claims["act"] == {"sub": "svc-console"}
    with pytest.raises(PermissionDenied, match="acts only for people"):
        delegation.person(console, signer.assertion("u-mallory", ("admin",)))
