"""Per-principal token buckets and concurrency quotas with a fake clock: exact refusals and
waits, refill, release, roles without limits, several roles, and the bound on memory."""

from __future__ import annotations

import pytest

from clinalign.common.auth import Principal, Role, principal_with_roles
from clinalign.common.quotas import PrincipalQuotas, RateLimited, RoleLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


LIMITS = {
    "clinician": RoleLimit(rate_per_s=2, burst=3, concurrent=2),
    "clinical-lead": RoleLimit(rate_per_s=5, burst=10, concurrent=4),
}


def test_a_burst_then_the_rate_with_the_exact_wait() -> None:
    clock = Clock()
    quotas = PrincipalQuotas(LIMITS, clock)
    alice = Principal("alice", Role.CLINICIAN)
    for _ in range(3):
        quotas.acquire(alice)()  # each call ends at once
    with pytest.raises(RateLimited, match=r"over its rate of 2 calls/s; retry in 0\.500 s") as e:
        quotas.acquire(alice)
    assert e.value.pushback_ms == "500"
    clock.now += 0.25  # half a token back: still refused, a shorter wait
    with pytest.raises(RateLimited, match=r"retry in 0\.250 s"):
        quotas.acquire(alice)
    clock.now += 0.25
    quotas.acquire(alice)()
    # Another principal of the same role has a bucket of its own.
    quotas.acquire(Principal("bob", Role.CLINICIAN))()


def test_calls_in_flight_are_capped_until_one_ends() -> None:
    quotas = PrincipalQuotas(LIMITS, Clock())
    alice = Principal("alice", Role.CLINICIAN)
    first = quotas.acquire(alice)
    quotas.acquire(alice)
    with pytest.raises(RateLimited, match="has 2 calls in flight"):
        quotas.acquire(alice)
    first()
    quotas.acquire(alice)


def test_unlimited_roles_and_the_most_generous_of_several() -> None:
    quotas = PrincipalQuotas(LIMITS, Clock())
    service = Principal("svc", Role.SERVICE)
    for _ in range(1000):
        quotas.acquire(service)
    lead = principal_with_roles("carol", frozenset({Role.CLINICIAN, Role.CLINICAL_LEAD}))
    assert quotas.limit_of(lead) == LIMITS["clinical-lead"]
    # A clinician who is also a service account is not limited per principal.
    both = principal_with_roles("x", frozenset({Role.CLINICIAN, Role.SERVICE}))
    assert quotas.limit_of(both) is None


def test_idle_principals_are_forgotten_beyond_the_bound() -> None:
    quotas = PrincipalQuotas(LIMITS, Clock(), max_tracked=3)
    busy = quotas.acquire(Principal("busy", Role.CLINICIAN))
    for i in range(10):
        quotas.acquire(Principal(f"p{i}", Role.CLINICIAN))()
    assert len(quotas._states) == 3
    assert ("", "busy") in quotas._states  # a principal with a call in flight is kept
    busy()
