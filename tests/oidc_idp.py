"""A real OpenID provider on loopback for the tests (the ``oidc-provider-mock`` package:
Flask and authlib, discovery, JWKS, authorization-code flow), and how a test signs a
person in at it.

The provider issues opaque access tokens and a signed ID token (a JWT whose ``aud`` is
the client id); the tests present the ID token as the bearer JWT: the same issuer, keys,
discovery and claim checks a JWT access token (RFC 9068) from Keycloak, Entra ID or
Okta meets in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, quote, urlsplit

import httpx2
import oidc_provider_mock

CLIENT_ID = "clinalign"
REDIRECT_URI = "http://127.0.0.1:1/callback"


@contextmanager
def running_idp() -> Iterator[str]:
    """Runs the provider on a free loopback port; yields its issuer URL."""
    with oidc_provider_mock.run_server_in_thread() as server:
        yield f"http://127.0.0.1:{server.server_port}"


def sign_in(issuer: str, subject: str, roles: list[str], client_id: str = CLIENT_ID) -> str:
    """Signs ``subject`` in through the authorization-code flow with ``roles`` in its
    ``roles`` claim; returns the ID token (a JWT for ``client_id``)."""
    with httpx2.Client(base_url=issuer, timeout=10) as http:
        put = http.put(f"/users/{quote(subject, safe='')}", json={"roles": roles})
        assert put.status_code == 204, put.text
        authorized = http.post(
            "/oauth2/authorize",
            params={
                "client_id": client_id,
                "redirect_uri": REDIRECT_URI,
                "response_type": "code",
                "scope": "openid",
                "state": "test-state",
                "nonce": "test-nonce",
            },
            data={"sub": subject},
        )
        assert authorized.status_code == 302, authorized.text
        code = parse_qs(urlsplit(authorized.headers["location"]).query)["code"][0]
        issued = http.post(
            "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "client_id": client_id,
                "client_secret": "test-secret",
            },
        )
        assert issued.status_code == 200, issued.text
        return str(issued.json()["id_token"])
