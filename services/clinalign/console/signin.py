"""How people sign in to the console.

- **OIDC** (whenever ``oidc_issuer`` is set): the authorization-code flow with PKCE (RFC
  7636, S256), ``state`` against cross-site request forgery of the callback and ``nonce``
  against ID-token replay, both kept with the verifier in a short-lived encrypted cookie.
  The ID token is verified like any token the services accept (``common.oidc``: issuer,
  audience, keys, expiry); the person's JWT (the access token when it is a JWT, else the ID
  token) is kept in the session and passed to the services as theirs, so each label,
  flag and review is attributed to them by the services' own checks.
- **Development only** (the embedded default, with no issuer): a choice of the demo
  clinicians in ``DEV_USERS``; the console vouches for them with an assertion it signs
  (``common.assertions``), which the services verify with its public key. Refused whenever an
  issuer is configured.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx2
import jwt

from clinalign.common.auth import Principal, looks_like_jwt
from clinalign.common.oidc import OidcConfig, OidcVerifier, check_url, fetch_json


class SignInError(Exception):
    """The sign-in round trip failed; the message is safe to show."""


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str


class OidcClient:
    """The console as an OIDC relying party of ``config.issuer``."""

    def __init__(
        self, config: OidcConfig, client_id: str, client_secret: str | None, scopes: str
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.client_secret = client_secret
        self.scopes = scopes
        # the ID token's audience is the console's client id
        self.verifier = OidcVerifier(
            OidcConfig(
                issuer=config.issuer,
                audience=client_id,
                jwks_url=config.jwks_url,
                roles_claim=config.roles_claim,
                leeway_s=config.leeway_s,
                ca_file=config.ca_file,
            )
        )
        self._endpoints: Endpoints | None = None

    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            doc = fetch_json(
                self.config.issuer.rstrip("/") + "/.well-known/openid-configuration",
                self.config.ca_file,
            )
            if doc.get("issuer") != self.config.issuer:
                raise SignInError("the issuer's discovery document names another issuer")
            try:
                self._endpoints = Endpoints(
                    check_url(str(doc["authorization_endpoint"]), "authorization_endpoint"),
                    check_url(str(doc["token_endpoint"]), "token_endpoint"),
                )
            except KeyError as exc:
                raise SignInError(f"the issuer's discovery document lacks {exc}") from None
        return self._endpoints

    def start(self, redirect_uri: str) -> tuple[str, dict[str, str]]:
        """The authorization URL to send the browser to, and what the callback needs."""
        verifier, challenge = pkce_pair()
        pending = {
            "state": secrets.token_urlsafe(24),
            "nonce": secrets.token_urlsafe(24),
            "verifier": verifier,
            "redirect_uri": redirect_uri,
        }
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.scopes,
                "state": pending["state"],
                "nonce": pending["nonce"],
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{self.endpoints().authorization}?{query}", pending

    async def finish(
        self, pending: dict[str, str], code: str, state: str
    ) -> tuple[Principal, str, int, str]:
        """(the person, the JWT to pass to the services, its expiry, their display name)
        from the callback's ``code`` and ``state``."""
        if not secrets.compare_digest(pending.get("state", ""), state):
            raise SignInError("the sign-in response does not match the request (state)")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending["redirect_uri"],
            "client_id": self.client_id,
            "code_verifier": pending["verifier"],
        }
        if self.client_secret:
            form["client_secret"] = self.client_secret
        verify: Any = str(self.config.ca_file) if self.config.ca_file else True
        try:
            async with httpx2.AsyncClient(timeout=10, verify=verify) as http:
                reply = await http.post(self.endpoints().token, data=form)
        except httpx2.HTTPError as exc:
            raise SignInError("the issuer could not be reached; try again") from exc
        if reply.status_code != 200:
            raise SignInError(f"the issuer refused the sign-in (HTTP {reply.status_code})")
        try:
            tokens = reply.json()
            id_token = str(tokens["id_token"])
        except (ValueError, KeyError, TypeError):
            raise SignInError("the issuer's answer holds no ID token") from None
        person = self.verifier.authenticate(f"Bearer {id_token}")  # raises Unauthenticated
        claims = jwt.decode(id_token, options={"verify_signature": False})
        if not secrets.compare_digest(str(claims.get("nonce", "")), pending.get("nonce", "")):
            raise SignInError("the ID token was not issued for this sign-in (nonce)")
        access = str(tokens.get("access_token") or "")
        passed = access if looks_like_jwt(access) else id_token
        expires = int(jwt.decode(passed, options={"verify_signature": False}).get("exp", 0))
        name = str(claims.get("name") or claims.get("preferred_username") or person.name)
        return person, passed, expires, name
