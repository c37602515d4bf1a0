"""The CDS client's JWT (CDS Hooks 2.0, "Trusting CDS Clients"), verified before anything
else is read: signed (asymmetric algorithms only, ``kid`` required) by a key of an issuer
in the allowlist, fetched from the JWKS URL configured for that issuer (a ``jku`` header,
when present, must be that URL: keys are never fetched from where a token points);
``aud`` the URL of the endpoint called; ``iss``, ``sub``, ``iat``, ``exp`` (at most five
minutes after ``iat``) and ``jti``, which is refused a second time while the token lives.

The ``jti`` set is in this process's memory (``Replays``): a token replayed to another
replica, or after a restart, within its five minutes is not caught. A shared store
(the monitor's database, Redis) is the fix and is not built yet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import jwt

from clinalign.cdshooks.errors import Unauthorized, Upstream
from clinalign.common.auth import bearer
from clinalign.common.errors import Unauthenticated
from clinalign.common.oidc import (
    ALGORITHMS,
    MAX_TOKEN_CHARS,
    JwksCache,
    OidcConfigError,
    check_url,
    fetch_json,
)

MAX_LIFETIME_S = 300  # the specification's five minutes


@dataclass(frozen=True)
class EhrClient:
    issuer: str
    subject: str  # the client id the EHR registered under


class Replays:
    """``(iss, jti)`` pairs seen, each kept until its token expires."""

    def __init__(self, limit: int = 200_000, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()

    def first_use(self, issuer: str, jti: str, until: float) -> bool:
        with self._lock:
            now = self._clock()
            if len(self._seen) >= self._limit:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
                if len(self._seen) >= self._limit:
                    raise Upstream("authorization", "too many live tokens; retry shortly")
            key = (issuer, jti)
            if self._seen.get(key, 0) > now:
                return False
            self._seen[key] = until
            return True


class ClientAuth:
    def __init__(
        self,
        issuers: dict[str, str],
        leeway_s: int,
        ca_file: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.jwks_urls = {iss: check_url(url, f"JWKS URL of {iss}") for iss, url in issuers.items()}
        self.keys = {
            iss: JwksCache(partial(fetch_json, url, ca_file), 300.0, 30.0)
            for iss, url in self.jwks_urls.items()
        }
        self.leeway_s = leeway_s
        self.replays = Replays(clock=clock)
        self.clock = clock

    def verify(self, authorization: str | None, audience: str) -> EhrClient:
        """The verified client, or Unauthorized saying what is wrong (never the token)."""
        token = _bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized("authorization", "malformed JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise Unauthorized("authorization", f"JWT algorithm {alg!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("authorization", "JWT header lacks `kid`")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or issuer not in self.keys:
            raise Unauthorized("authorization", "JWT issuer is not a trusted EHR")
        jku = header.get("jku")
        if jku is not None and jku != self.jwks_urls[issuer]:
            raise Unauthorized("authorization", "JWT `jku` is not the issuer's registered JWKS")
        key = self._key(issuer, kid, alg)
        claims = self._decode(token, key, alg, audience, issuer)
        if int(claims["exp"]) - int(claims["iat"]) > MAX_LIFETIME_S:
            raise Unauthorized("authorization", "JWT lives longer than five minutes")
        subject, jti = claims.get("sub"), claims.get("jti")
        if not isinstance(subject, str) or not subject or not isinstance(jti, str) or not jti:
            raise Unauthorized("authorization", "JWT `sub` and `jti` must be strings")
        if not self.replays.first_use(issuer, jti, float(claims["exp"]) + self.leeway_s):
            raise Unauthorized("authorization", "JWT was already used (jti)")
        return EhrClient(issuer, subject)

    def _key(self, issuer: str, kid: str, alg: str) -> jwt.PyJWK:
        try:
            found = self.keys[issuer].key(kid)
        except (OidcConfigError, httpx2.HTTPError):
            raise Upstream("authorization", "the EHR's keys could not be fetched") from None
        if found is None:
            raise Unauthorized("authorization", f"JWT key id {kid!r} is not the issuer's")
        key, declared = found
        if declared is not None and declared != alg:
            raise Unauthorized("authorization", "JWT algorithm is not its key's")
        return key

    def _decode(
        self, token: str, key: jwt.PyJWK, alg: str, audience: str, issuer: str
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer,
                leeway=self.leeway_s,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("authorization", "JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("authorization", "JWT `aud` is not this endpoint's URL") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized("authorization", f"JWT lacks `{exc.claim}`") from None
        except jwt.PyJWTError:
            raise Unauthorized("authorization", "JWT does not verify") from None
        return claims


def _bearer(authorization: str | None) -> str:
    try:
        token = bearer(authorization)
    except Unauthenticated as exc:
        raise Unauthorized("authorization", str(exc)) from None
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("authorization", "JWT too long")
    return token
