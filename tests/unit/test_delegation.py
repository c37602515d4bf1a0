"""A front door acting for a person: its own assertions (ES256, the front door's key) and
everything that must refuse one."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from clinalign.common.auth import Principal, Role
from clinalign.common.delegation import Delegation
from clinalign.common.errors import PermissionDenied, Unauthenticated

DOOR = Principal("svc-cds-hooks", Role.SERVICE)
KEY = ec.generate_private_key(ec.SECP256R1())


def _assertion(key: Any = KEY, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": "svc-cds-hooks",
        "aud": "clinalign",
        "sub": "ehr:hospital-a:dr-4711",
        "roles": ["clinician"],
        "act": {"sub": "svc-cds-hooks"},
        "iat": now,
        "exp": now + 60,
    }
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="ES256")


@pytest.fixture
def delegation() -> Delegation:
    return Delegation(None, {"cds-hooks": KEY.public_key()})


def test_a_front_door_acts_for_the_person_it_vouches_for(delegation: Delegation) -> None:
    person = delegation.person(DOOR, _assertion())
    assert (person.name, person.role, person.via) == (
        "ehr:hospital-a:dr-4711",
        Role.CLINICIAN,
        "svc-cds-hooks",
    )
    assert person.shown == "ehr:hospital-a:dr-4711 via svc-cds-hooks"


# Each case builds its assertion when it runs (lambdas): built at collection, a token
# meant to be valid for a minute could expire before a long suite reaches it.
@pytest.mark.parametrize(
    ("caller", "make", "error", "message"),
    [
        (
            Principal("svc-monitor", Role.SERVICE),
            lambda: _assertion(),
            PermissionDenied,
            "only the front doors",
        ),
        (
            Principal("local-admin", Role.ADMIN),
            lambda: _assertion(),
            PermissionDenied,
            "only the front doors",
        ),
        (
            DOOR,
            lambda: _assertion(key=ec.generate_private_key(ec.SECP256R1())),
            Unauthenticated,
            "does not verify",
        ),
        (DOOR, lambda: _assertion(act={"sub": "svc-console"}), Unauthenticated, "as its actor"),
        (
            DOOR,
            lambda: _assertion(exp=int(time.time()) + 3600),
            Unauthenticated,
            "longer than 300 s",
        ),
        (DOOR, lambda: _assertion(exp=int(time.time()) - 60), Unauthenticated, "does not verify"),
        (DOOR, lambda: _assertion(aud="elsewhere"), Unauthenticated, "does not verify"),
        (DOOR, lambda: _assertion(roles=["admin"]), PermissionDenied, "acts only for people"),
        (
            DOOR,
            lambda: _assertion(roles=["ml-engineer", "clinician"]),
            PermissionDenied,
            "acts only for people",
        ),
        (DOOR, lambda: "not-a-jwt", Unauthenticated, "must be a JWT"),
    ],
)
def test_what_a_front_door_may_not_assert(
    delegation: Delegation, caller: Principal, make: Any, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        delegation.person(caller, make())


def test_without_the_front_doors_key_nothing_it_signs_is_accepted() -> None:
    with pytest.raises(Unauthenticated, match="no public key of front door 'cds-hooks'"):
        Delegation(None, {}).person(DOOR, _assertion())
