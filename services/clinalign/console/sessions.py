"""Sign-in sessions, held by the browser: an encrypted, authenticated cookie (Fernet:
AES-128-CBC with HMAC-SHA256, from ``cryptography``), so any replica that shares the key
reads it and the console stores nothing of its own.

A session carries who signed in (subject, display name, roles), how (``issuer``: the OIDC
issuer, or ``dev`` for the development sign-in), the person's token when an issuer signed
them in (passed through to the services as theirs), a CSRF token, and two clocks: it ends
``session_max_s`` after sign-in, and after ``idle_timeout_s`` without a request (each
request re-issues the cookie with a new ``seen``). The cookie is HttpOnly, Secure and
SameSite=Lax; state-changing requests must also carry the CSRF token in their form
(``csrf_ok``), so a cross-site form post fails even where SameSite does not hold.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from clinalign.common.keyfiles import read_or_create

COOKIE = "clinalign_session"
PENDING_COOKIE = "clinalign_signin"  # the OIDC round trip's state, nonce and verifier
DEV_ISSUER = "dev"


@dataclass(frozen=True)
class Session:
    subject: str
    name: str
    roles: tuple[str, ...]
    issuer: str  # the OIDC issuer, or DEV_ISSUER
    token: str = ""  # the person's own JWT (issuer sign-in); empty for the dev sign-in
    token_exp: int = 0  # when that token expires (epoch seconds); 0: none
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    started: int = field(default_factory=lambda: int(time.time()))
    seen: int = field(default_factory=lambda: int(time.time()))

    def has(self, *roles: str) -> bool:
        return bool(set(roles) & set(self.roles))

    def touched(self, now: int) -> Session:
        return replace(self, seen=now)


def load_key(path: Path) -> bytes:
    """The Fernet key in ``path``, made (owner-only) when the file does not exist."""
    return read_or_create(path, Fernet.generate_key).strip()


class Sessions:
    """Seals sessions into cookie values and opens them again, enforcing both clocks."""

    def __init__(self, key: bytes, idle_timeout_s: int, max_age_s: int) -> None:
        self.fernet = Fernet(key)
        self.idle_timeout_s = idle_timeout_s
        self.max_age_s = max_age_s

    def seal(self, session: Session) -> str:
        return self.fernet.encrypt(json.dumps(asdict(session)).encode()).decode()

    def open(self, value: str | None, now: int | None = None) -> Session | None:
        """The session in a cookie value; ``None`` when absent, forged, tampered with,
        idle too long, past its maximum age, or holding an expired token."""
        if not value:
            return None
        now = int(time.time()) if now is None else now
        try:
            raw = json.loads(self.fernet.decrypt(value.encode(), ttl=self.max_age_s))
            session = Session(**{**raw, "roles": tuple(raw["roles"])})
        except (InvalidToken, ValueError, TypeError, KeyError):
            return None
        if now - session.seen > self.idle_timeout_s or now - session.started > self.max_age_s:
            return None
        if session.token_exp and now >= session.token_exp:
            return None  # the services would refuse the token: sign in again
        return session

    def seal_pending(self, pending: dict[str, str]) -> str:
        return self.fernet.encrypt(json.dumps(pending).encode()).decode()

    def open_pending(self, value: str | None, ttl_s: int = 600) -> dict[str, str] | None:
        if not value:
            return None
        try:
            raw = json.loads(self.fernet.decrypt(value.encode(), ttl=ttl_s))
        except (InvalidToken, ValueError):
            return None
        return raw if isinstance(raw, dict) else None


def csrf_ok(session: Session, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(session.csrf, str(submitted))
