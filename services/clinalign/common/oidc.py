"""Verifies people's OIDC/OAuth2 access tokens: JWTs from one configured issuer.

What a token must carry to become a :class:`~clinalign.common.auth.Principal`:

- a signature by one of the issuer's keys, its JSON Web Key Set (RFC 7517) fetched over
  HTTPS from the ``jwks_uri`` of the issuer's discovery document (OpenID Connect
  Discovery 1.0, section 4) or from a configured URL;
- an asymmetric algorithm (RS/PS/ES/EdDSA). ``none`` and the HMAC family are refused
  before any key is looked at, so neither an unsigned token nor one "signed" with the
  issuer's public key as an HMAC secret gets through (RFC 8725, sections 2.1 and 3.1);
- ``iss`` equal to the issuer, ``aud`` naming the configured audience, ``exp`` in the
  future and ``nbf`` (when present) in the past, each within a bounded clock skew, and
  ``sub`` (RFC 9068, section 4);
- at least one ClinAlign role in the configured claim (a dotted path such as
  ``realm_access.roles``; a list, or a string of space-separated names).

Keys are cached for ``jwks_cache_s``. A token naming an unknown ``kid`` makes the cache
refetch (the issuer rotated its keys), but at most once every ``jwks_min_refresh_s``, so
forged key ids cannot make this service hammer the issuer.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import jwt

from clinalign.common.auth import (
    CombinedAuthenticator,
    Principal,
    Role,
    TokenAuthenticator,
    bearer,
    principal_with_roles,
)
from clinalign.common.config import CommonSettings
from clinalign.common.errors import PermissionDenied, Unauthenticated

log = logging.getLogger("clinalign.oidc")

# Asymmetric algorithms only (RFC 7518 section 3.1, RFC 8037).
ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_TOKEN_CHARS = 16_384
MAX_DOCUMENT_BYTES = 1 << 20
_FETCH_TIMEOUT_S = 5.0


class OidcConfigError(ValueError):
    """The issuer's configuration or documents are unusable (raised at start-up or on a
    refetch; callers see UNAUTHENTICATED, the log sees this)."""


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    jwks_url: str | None = None  # None: from the issuer's discovery document
    roles_claim: str = "roles"
    leeway_s: int = 30
    ca_file: Path | None = None
    jwks_cache_s: float = 300.0
    jwks_min_refresh_s: float = 30.0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """HTTPS, or plain HTTP to a loopback address (a development issuer on this host)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return url
    raise OidcConfigError(f"{what} {url!r} must be an https:// URL (http only on loopback)")


def fetch_json(url: str, ca_file: Path | None) -> dict[str, Any]:
    """GETs a JSON object over HTTPS, with a timeout and a size limit."""
    verify: Any = str(ca_file) if ca_file else True
    with httpx2.Client(timeout=_FETCH_TIMEOUT_S, verify=verify, follow_redirects=False) as client:
        with client.stream("GET", check_url(url, "URL")) as response:
            if response.status_code != 200:
                raise OidcConfigError(f"GET {url} answered HTTP {response.status_code}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise OidcConfigError(f"GET {url}: document larger than 1 MiB")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise OidcConfigError(f"GET {url}: not JSON") from exc
    if not isinstance(document, dict):
        raise OidcConfigError(f"GET {url}: not a JSON object")
    return document


def discover_jwks_url(issuer: str, ca_file: Path | None) -> str:
    """The ``jwks_uri`` of the issuer's discovery document, whose ``issuer`` must match."""
    document = fetch_json(issuer.rstrip("/") + "/.well-known/openid-configuration", ca_file)
    if document.get("issuer") != issuer:
        raise OidcConfigError(
            f"discovery document names issuer {document.get('issuer')!r}, not {issuer!r}"
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise OidcConfigError("discovery document has no jwks_uri")
    return check_url(jwks_uri, "jwks_uri")


class JwksCache:
    """The issuer's signing keys by ``kid``, refetched when stale or on an unknown ``kid``
    (rate-limited). Thread-safe: tokens are verified off the event loop."""

    def __init__(
        self,
        fetch: Callable[[], dict[str, Any]],
        cache_s: float,
        min_refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._cache_s = cache_s
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        # kid -> (key, the algorithm the key set declares for it, if any)
        self._keys: dict[str | None, tuple[jwt.PyJWK, str | None]] = {}
        self._fetched_at: float | None = None

    def _refresh(self) -> None:
        document = self._fetch()
        self._fetched_at = self._clock()
        keys: dict[str | None, tuple[jwt.PyJWK, str | None]] = {}
        for raw in document.get("keys", []):
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK.from_dict(raw)
            except jwt.PyJWTError:
                continue  # a key type this library cannot use; others may still serve
            declared = raw.get("alg")
            keys[raw.get("kid")] = (key, declared if isinstance(declared, str) else None)
        self._keys = keys

    def key(self, kid: str | None) -> tuple[jwt.PyJWK, str | None] | None:
        with self._lock:
            now = self._clock()
            age = None if self._fetched_at is None else now - self._fetched_at
            if age is None or age > self._cache_s:
                self._refresh()
            elif self._lookup(kid) is None and age > self._min_refresh_s:
                self._refresh()  # the issuer may have rotated its keys
            return self._lookup(kid)

    def _lookup(self, kid: str | None) -> tuple[jwt.PyJWK, str | None] | None:
        if kid is None:
            # A token without a kid is accepted only while the issuer publishes one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def roles_from(claims: dict[str, Any], path: str) -> frozenset[Role]:
    """The ClinAlign roles in the claim at ``path``; other values are ignored."""
    value = _claim(claims, path)
    names = value.split() if isinstance(value, str) else value
    if not isinstance(names, list):
        return frozenset()
    known = {r.value: r for r in Role}
    return frozenset(known[n] for n in names if isinstance(n, str) and n in known)


_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "JWT has expired"),
    (jwt.ImmatureSignatureError, "JWT is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "JWT audience does not name this service"),
    (jwt.InvalidIssuerError, "JWT issuer is not the configured issuer"),
    (jwt.MissingRequiredClaimError, "JWT lacks a required claim"),
    (jwt.InvalidSignatureError, "JWT signature does not verify"),
)


class OidcVerifier:
    """Turns a JWT bearer token into a principal, or raises Unauthenticated (bad token)
    or PermissionDenied (a good token without a ClinAlign role)."""

    def __init__(self, config: OidcConfig, keys: JwksCache | None = None) -> None:
        check_url(config.issuer, "issuer")
        self.config = config
        self._jwks_url = config.jwks_url
        self.keys = keys or JwksCache(
            self._fetch_jwks, config.jwks_cache_s, config.jwks_min_refresh_s
        )

    def _fetch_jwks(self) -> dict[str, Any]:
        if self._jwks_url is None:
            self._jwks_url = discover_jwks_url(self.config.issuer, self.config.ca_file)
        return fetch_json(check_url(self._jwks_url, "jwks_url"), self.config.ca_file)

    def authenticate(self, authorization: str | None) -> Principal:
        token = bearer(authorization)
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(f"JWT longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed JWT") from exc
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthenticated(
                f"JWT algorithm {alg!r} is not accepted; expected one of "
                + ", ".join(sorted(ALGORITHMS))
            )
        kid = header.get("kid")
        try:
            found = self.keys.key(kid if isinstance(kid, str) else None)
        except (OidcConfigError, httpx2.HTTPError) as exc:
            # The cause (URLs, the issuer's answer) goes to the log, not to the caller.
            log.warning("fetching the issuer's keys failed: %s", exc)
            raise Unauthenticated("the issuer's keys could not be fetched; retry later") from exc
        if found is None:
            raise Unauthenticated(f"JWT key id {kid!r} is not among the issuer's keys")
        key, declared = found
        if declared is not None and declared != alg:
            raise Unauthenticated(f"JWT algorithm {alg!r} is not its key's {declared!r}")
        claims = self._decode(token, key, alg)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 1 <= len(subject) <= 255:
            raise Unauthenticated("JWT `sub` must be a string of 1-255 characters")
        held = roles_from(claims, self.config.roles_claim)
        if not held:
            raise PermissionDenied(
                f"token of {subject!r} carries no ClinAlign role in claim "
                f"{self.config.roles_claim!r}"
            )
        return principal_with_roles(subject, held, self.config.issuer)

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            for kind, message in _REFUSALS:
                if isinstance(exc, kind):
                    raise Unauthenticated(message) from exc
            raise Unauthenticated("JWT does not verify") from exc


def oidc_config(common: CommonSettings) -> OidcConfig | None:
    """The verifier's configuration from the shared settings; None without an issuer."""
    if common.oidc_issuer is None:
        return None
    if not common.oidc_audience:
        raise OidcConfigError("CLINALIGN_OIDC_AUDIENCE is required with CLINALIGN_OIDC_ISSUER")
    return OidcConfig(
        issuer=check_url(common.oidc_issuer, "oidc_issuer"),
        audience=common.oidc_audience,
        jwks_url=check_url(common.oidc_jwks_url, "oidc_jwks_url") if common.oidc_jwks_url else None,
        roles_claim=common.oidc_roles_claim,
        leeway_s=common.oidc_leeway_s,
        ca_file=common.oidc_ca_file,
    )


def authenticator_from(common: CommonSettings) -> CombinedAuthenticator:
    """Static tokens from the tokens file, and JWTs when an issuer is configured."""
    config = oidc_config(common)
    return CombinedAuthenticator(
        TokenAuthenticator.from_file(common.resolved_tokens_file),
        OidcVerifier(config) if config else None,
    )
