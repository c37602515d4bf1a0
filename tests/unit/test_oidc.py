"""The OIDC verifier against tokens this test signs itself: what it accepts, every forgery
it refuses (wrong key, audience, issuer, expired, not yet valid, ``alg: none``, HS256
keyed with the public key, unknown ``kid``), the roles claim, and how the key cache
refetches on rotation without letting forged key ids hammer the issuer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from clinalign.common.auth import CombinedAuthenticator, Role, TokenAuthenticator, TokenEntry
from clinalign.common.errors import PermissionDenied, Unauthenticated
from clinalign.common.oidc import JwksCache, OidcConfig, OidcConfigError, OidcVerifier, check_url

ISSUER = "https://idp.example.org/realms/clinalign"
AUDIENCE = "clinalign"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: Any, kid: str, alg: str | None = "RS256") -> dict[str, Any]:
    algo = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else jwt.algorithms.ECAlgorithm
    )
    data: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    data.update(kid=kid, use="sig")
    if alg:
        data["alg"] = alg
    return data


class Issuer:
    """A signing key set this test controls, served to the verifier through JwksCache."""

    def __init__(self) -> None:
        self.keys = {"k1": _rsa()}
        self.published = ["k1"]
        self.fetches = 0
        self.now = 1000.0

    def document(self) -> dict[str, Any]:
        self.fetches += 1
        return {"keys": [_jwk(self.keys[k], k) for k in self.published]}

    def token(
        self, key: Any = None, kid: str | None = "k1", alg: str = "RS256", **claims: Any
    ) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "u-alice",
            "exp": now + 300,
            "iat": now,
            "roles": ["clinician"],
        }
        body.update(claims)
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            key or self.keys["k1"],
            algorithm=alg,
            headers=headers,
        )


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def _verifier(issuer: Issuer, **config: Any) -> OidcVerifier:
    cache = JwksCache(issuer.document, cache_s=300, min_refresh_s=30, clock=lambda: issuer.now)
    return OidcVerifier(
        OidcConfig(ISSUER, AUDIENCE, leeway_s=config.pop("leeway_s", 30), **config), cache
    )


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _hs256_keyed_with_public_key(issuer: Issuer) -> str:
    """The classic confusion: HMAC keyed with the issuer's public key, which anyone can
    read from the JWKS (signed by hand: PyJWT itself refuses to make one)."""
    public = (
        issuer.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-alice", "exp": int(time.time()) + 300}
    signing_input = _b64({"alg": "HS256", "kid": "k1"}) + "." + _b64(claims)
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def test_a_good_token_becomes_its_subject_with_its_roles(issuer: Issuer) -> None:
    verify = _verifier(issuer)
    p = verify.authenticate("Bearer " + issuer.token(roles=["clinician", "clinical-lead", "x"]))
    assert (p.name, p.role, p.roles, p.issuer) == (
        "u-alice",
        Role.CLINICAL_LEAD,
        frozenset({Role.CLINICIAN, Role.CLINICAL_LEAD}),
        ISSUER,
    )
    assert not p.acts_for_others
    # A dotted roles claim, and a space-separated string of names.
    nested = _verifier(issuer, roles_claim="realm_access.roles")
    token = issuer.token(roles=None, realm_access={"roles": "offline_access clinician"})
    assert nested.authenticate("Bearer " + token).roles == {Role.CLINICIAN}


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        (lambda i: i.token(key=_rsa()), "signature does not verify"),
        (lambda i: i.token(aud="another-service"), "audience does not name this service"),
        (lambda i: i.token(iss="https://evil.example.org"), "issuer is not the configured"),
        (lambda i: i.token(exp=int(time.time()) - 120), "has expired"),
        (lambda i: i.token(nbf=int(time.time()) + 120), "not valid yet"),
        (lambda i: i.token(exp=None), "lacks a required claim"),
        (lambda i: i.token(sub=None), "lacks a required claim"),
        (lambda i: i.token(kid="k-unknown"), "key id 'k-unknown' is not among"),
        (lambda i: i.token(alg="RS384"), "'RS384' is not its key's 'RS256'"),
        (
            lambda i: _b64({"alg": "none", "kid": "k1"}) + "." + _b64({"sub": "u-alice"}) + ".",
            "algorithm 'none' is not accepted",
        ),
        (_hs256_keyed_with_public_key, "algorithm 'HS256' is not accepted"),
        (lambda i: "a.b.c", "malformed JWT"),
        (lambda i: "x" * 9000 + "." + "y" * 9000 + ".z", "longer than 16384"),
    ],
)
def test_forged_and_wrong_tokens_are_unauthenticated(
    issuer: Issuer, forge: Any, message: str
) -> None:
    with pytest.raises(Unauthenticated, match=message):
        _verifier(issuer).authenticate("Bearer " + forge(issuer))


def test_expiry_allows_only_the_configured_skew(issuer: Issuer) -> None:
    slightly_late = issuer.token(exp=int(time.time()) - 10)
    assert _verifier(issuer, leeway_s=30).authenticate("Bearer " + slightly_late).name == "u-alice"
    with pytest.raises(Unauthenticated, match="has expired"):
        _verifier(issuer, leeway_s=0).authenticate("Bearer " + slightly_late)


def test_a_token_without_a_clinalign_role_is_permission_denied(issuer: Issuer) -> None:
    with pytest.raises(PermissionDenied, match="carries no ClinAlign role in claim 'roles'"):
        _verifier(issuer).authenticate("Bearer " + issuer.token(roles=["offline_access"]))


def test_keys_rotate_and_unknown_kids_refetch_at_most_once_per_interval(issuer: Issuer) -> None:
    verify = _verifier(issuer)
    verify.authenticate("Bearer " + issuer.token())
    assert issuer.fetches == 1
    # Forged key ids within the interval: no refetch.
    for _ in range(5):
        with pytest.raises(Unauthenticated, match="not among"):
            verify.authenticate("Bearer " + issuer.token(kid="k-forged"))
    assert issuer.fetches == 1
    # The issuer rotates to k2; after the interval a k2 token makes the cache refetch.
    issuer.keys["k2"] = _rsa()
    issuer.published = ["k2"]
    issuer.now += 31
    assert (
        verify.authenticate("Bearer " + issuer.token(key=issuer.keys["k2"], kid="k2")).name
        == "u-alice"
    )
    assert issuer.fetches == 2
    # k1 is no longer published: its tokens are refused once the cache has refreshed.
    with pytest.raises(Unauthenticated, match="key id 'k1' is not among"):
        verify.authenticate("Bearer " + issuer.token())


def test_ec_keys_and_a_token_without_kid_when_the_issuer_has_one_key(issuer: Issuer) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cache = JwksCache(lambda: {"keys": [_jwk(key, "e1", "ES384")]}, 300, 30)
    verify = OidcVerifier(OidcConfig(ISSUER, AUDIENCE), cache)
    assert (
        verify.authenticate("Bearer " + issuer.token(key=key, kid=None, alg="ES384")).name
        == "u-alice"
    )


def test_issuer_urls_must_be_https_except_on_loopback() -> None:
    assert check_url("http://127.0.0.1:9400", "issuer")
    assert check_url("http://localhost:9400", "issuer")
    with pytest.raises(OidcConfigError, match="must be an https:// URL"):
        check_url("http://idp.example.org", "issuer")


def test_static_tokens_and_jwts_side_by_side(issuer: Issuer) -> None:
    static = TokenAuthenticator([TokenEntry("svc-monitor", Role.SERVICE, "tok-svc")])
    without_issuer = CombinedAuthenticator(static, None)
    assert without_issuer.authenticate("Bearer tok-svc").name == "svc-monitor"
    with pytest.raises(Unauthenticated, match="no OIDC issuer is configured"):
        without_issuer.authenticate("Bearer " + issuer.token())
    both = CombinedAuthenticator(static, _verifier(issuer))
    assert both.authenticate("Bearer " + issuer.token()).name == "u-alice"
    assert both.authenticate("Bearer tok-svc").acts_for_others
