"""Minting the assertions a front door signs for the people it verified
(``common.delegation`` verifies them): the front door's ES256 signing key, made on first
start, its public half for the services' ``delegation_keys_file``, and the signer.

The console signs with these for its development sign-in, the CDS Hooks gateway for the
EHR users it verified.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt

from clinalign.common.delegation import AUDIENCE, MAX_LIFETIME_S
from clinalign.common.keyfiles import read_or_create

ASSERTION_LIFETIME_S = 120  # well inside the services' MAX_LIFETIME_S
assert ASSERTION_LIFETIME_S <= MAX_LIFETIME_S


def load_signing_key(path: Path, alg: str = "ES256") -> jwt.PyJWK:
    """The private JWK in ``path`` (an EC key for ``alg``: ES256 or ES384), made
    (owner-only) when absent."""
    return jwt.PyJWK.from_dict(json.loads(read_or_create(path, lambda: _new_signing_key(alg))))


def _new_signing_key(alg: str) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}[alg]
    key = ec.generate_private_key(curve())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    jwk |= {"alg": alg, "use": "sig", "kid": secrets.token_hex(8)}
    return json.dumps(jwk).encode()


def public_jwk(key: jwt.PyJWK) -> dict[str, Any]:
    """The public half of a signing key (for ``delegation_keys_file``, or a JWKS)."""
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.key.public_key()))
    return public | {"alg": key.algorithm_name, "use": "sig", "kid": key.key_id}


class AssertionSigner:
    """Signs assertions: ``iss`` and ``act.sub`` the front door's principal, ``aud``
    clinalign, ``sub`` the person, their ``roles``, two minutes of life; each reused for
    a minute."""

    def __init__(self, key: jwt.PyJWK, principal: str) -> None:
        self.key = key
        self.principal = principal
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[str, int]] = {}

    def assertion(self, subject: str, roles: tuple[str, ...]) -> str:
        now = int(time.time())
        cached = self._cache.get((subject, roles))
        if cached and cached[1] - now > ASSERTION_LIFETIME_S // 2:
            return cached[0]
        claims = {
            "iss": self.principal,
            "aud": AUDIENCE,
            "sub": subject,
            "roles": list(roles),
            "act": {"sub": self.principal},
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
        }
        token = jwt.encode(
            claims, self.key.key, algorithm="ES256", headers={"kid": self.key.key_id}
        )
        if len(self._cache) > 10_000:  # many distinct EHR users: start again
            self._cache.clear()
        self._cache[(subject, roles)] = (token, now + ASSERTION_LIFETIME_S)
        return token
