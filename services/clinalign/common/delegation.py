"""Delegated attribution: a front door acting for the person it verified.

A front door (the console, the CDS Hooks gateway) calls the services with its own
credential (``svc-console``) and, beside it, an assertion of whom it acts for in the
``x-clinalign-on-behalf-of`` metadata. Only the front doors in :data:`FRONT_DOORS` may;
the call then runs as the person, with the person's roles, and the principal records both
(``Principal.via``): audit entries read ``u-alice via svc-console``.

The assertion is one of two JWTs:

- the person's own access token from the configured OIDC issuer (the console passes the
  signed-in clinician's token through), verified as any such token;
- an assertion the front door signs itself, for people the issuer does not know (an EHR
  user behind CDS Hooks): ES256 or EdDSA under the front door's key, whose public JWK is
  in ``delegation_keys_file`` by front door; ``iss`` the front door's principal, ``aud``
  ``clinalign``, ``sub`` the person, ``roles``, ``act.sub`` the front door again (RFC
  8693's actor claim), and a lifetime of at most five minutes.

A front door can vouch only for people: an assertion of ``admin``, ``ml-engineer`` or
``service`` is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt

from clinalign.common.auth import (
    Authenticator,
    Principal,
    Role,
    looks_like_jwt,
    own_service,
    principal_with_roles,
)
from clinalign.common.config import CommonSettings
from clinalign.common.errors import PermissionDenied, Unauthenticated
from clinalign.common.oidc import roles_from

ON_BEHALF_OF = "x-clinalign-on-behalf-of"
FRONT_DOORS: frozenset[str] = frozenset({"console", "cds-hooks"})
AUDIENCE = "clinalign"
MAX_LIFETIME_S = 300
_PEOPLE_ONLY = frozenset({Role.ADMIN, Role.ML_ENGINEER, Role.SERVICE})
_ALGORITHMS = ["ES256", "EdDSA"]


def load_front_door_keys(path: Path | None) -> dict[str, Any]:
    """Front door name -> its public key, from ``{"<door>": <JWK>, ...}``."""
    if path is None:
        return {}
    raw = json.loads(path.read_text())
    keys = {}
    for door, jwk in raw.items():
        if door not in FRONT_DOORS:
            raise ValueError(f"{path}: {door!r} is not a front door ({sorted(FRONT_DOORS)})")
        keys[door] = jwt.PyJWK.from_dict(jwk).key
    return keys


class Delegation:
    """Resolves ``(caller, assertion)`` to the person the caller acts for."""

    def __init__(self, oidc: Authenticator | None, front_door_keys: dict[str, Any]) -> None:
        self.oidc = oidc
        self.keys = front_door_keys

    def person(self, caller: Principal, assertion: str) -> Principal:
        door = own_service(caller)
        if door not in FRONT_DOORS:
            raise PermissionDenied(
                f"{caller.name!r} may not act on behalf of anyone: only the front doors "
                f"({', '.join(sorted(FRONT_DOORS))}) may"
            )
        if not looks_like_jwt(assertion):
            raise Unauthenticated(f"{ON_BEHALF_OF} must be a JWT")
        issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
        if issuer == caller.name:
            person = self._minted(door, caller, assertion)
        elif self.oidc is not None:
            person = self.oidc.authenticate(f"Bearer {assertion}")
        else:
            raise Unauthenticated(
                f"{ON_BEHALF_OF} is neither signed by {caller.name} nor by a configured issuer"
            )
        if person.roles & _PEOPLE_ONLY:
            raise PermissionDenied(
                "a front door acts only for people, not for admin, ml-engineer or service roles"
            )
        return Principal(person.name, person.role, person.also, person.issuer, via=caller.name)

    def _minted(self, door: str, caller: Principal, assertion: str) -> Principal:
        key = self.keys.get(door)
        if key is None:
            raise Unauthenticated(f"no public key of front door {door!r} is configured")
        try:
            claims = jwt.decode(
                assertion,
                key=key,
                algorithms=_ALGORITHMS,
                audience=AUDIENCE,
                issuer=caller.name,
                leeway=5,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"{ON_BEHALF_OF} does not verify: {type(exc).__name__}") from exc
        if int(claims["exp"]) - int(claims["iat"]) > MAX_LIFETIME_S:
            raise Unauthenticated(f"{ON_BEHALF_OF} lives longer than {MAX_LIFETIME_S} s")
        actor = claims.get("act")
        if not isinstance(actor, dict) or actor.get("sub") != caller.name:
            raise Unauthenticated(f"{ON_BEHALF_OF} must name {caller.name} as its actor (act)")
        held = roles_from(claims, "roles")
        if not held:
            raise PermissionDenied(f"{ON_BEHALF_OF} carries no ClinAlign role")
        subject = str(claims["sub"])
        if not 1 <= len(subject) <= 255:
            raise Unauthenticated(f"{ON_BEHALF_OF} `sub` must be 1-255 characters")
        return principal_with_roles(subject, held, caller.name)


def delegation_from(common: CommonSettings, authenticator: Authenticator) -> Delegation:
    """Front doors' assertions verified by the server's OIDC verifier (people's own tokens)
    and the configured front-door keys."""
    oidc = getattr(authenticator, "jwt_verifier", None)
    return Delegation(oidc, load_front_door_keys(common.delegation_keys_file))
