"""Per-principal rate limits and concurrency quotas, configured per role.

Each principal (a person's subject, a static token's principal) has its own token bucket
(a sustained rate with a burst; the classic token bucket, as in Envoy's and gRPC's local
rate limiters) and a cap on its RPCs in flight, streams included. A call over either is
refused with RESOURCE_EXHAUSTED at once, before its handler runs, with a hint: the
``grpc-retry-pushback-ms`` trailer (gRPC's retry design, A6) says how long to wait. So one
EHR client cannot take the whole generation queue, nor one clinician's script the
preference store's write lock.

A principal's limits are its most generous role's. Roles without an entry (by default
``service`` and ``admin``: the platform's own traffic) are not limited here; every server
still caps its concurrent RPCs as a whole.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, Field

from clinalign.common.auth import Principal
from clinalign.common.errors import ResourceExhausted

PUSHBACK_TRAILER = "grpc-retry-pushback-ms"
# Principals remembered at once; idle ones (full bucket, nothing in flight) are forgotten
# first, so a flood of distinct subjects cannot grow memory without bound.
MAX_TRACKED = 10_000


class RoleLimit(BaseModel):
    """One role's limits, per principal."""

    rate_per_s: float = Field(gt=0, le=1e6, description="Sustained requests per second.")
    burst: int = Field(ge=1, le=1_000_000, description="Requests allowed at once above it.")
    concurrent: int = Field(ge=1, le=100_000, description="RPCs in flight, streams included.")


DEFAULT_LIMITS: dict[str, RoleLimit] = {
    # Half the generation queue's default (64): one EHR system cannot take all of it.
    "ehr-client": RoleLimit(rate_per_s=100, burst=200, concurrent=32),
    "clinician": RoleLimit(rate_per_s=10, burst=50, concurrent=8),
    "clinical-lead": RoleLimit(rate_per_s=20, burst=100, concurrent=16),
    "ml-engineer": RoleLimit(rate_per_s=50, burst=200, concurrent=32),
}


class RateLimited(ResourceExhausted):
    """A principal over its rate or its concurrency; carries the wait to suggest."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def pushback_ms(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s * 1000)))


@dataclass
class _State:
    tokens: float
    updated: float
    in_flight: int = 0


class PrincipalQuotas:
    """Admits or refuses each call of a principal; thread-safe."""

    def __init__(
        self,
        limits: Mapping[str, RoleLimit],
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.limits = dict(limits)
        self._clock = clock
        self._max_tracked = max_tracked
        self._lock = threading.Lock()
        self._states: OrderedDict[tuple[str, str], _State] = OrderedDict()

    def limit_of(self, principal: Principal) -> RoleLimit | None:
        """The most generous limit among the principal's roles; None when any of its
        roles is unlimited."""
        found = []
        for role in principal.roles:
            limit = self.limits.get(role.value)
            if limit is None:
                return None
            found.append(limit)
        return max(found, key=lambda x: (x.concurrent, x.rate_per_s, x.burst), default=None)

    def acquire(self, principal: Principal) -> Callable[[], None]:
        """Admits one call (returns the function that ends it) or raises RateLimited."""
        limit = self.limit_of(principal)
        if limit is None:
            return _nothing
        key = (principal.issuer, principal.name)
        with self._lock:
            now = self._clock()
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = _State(float(limit.burst), now)
                self._forget_idle(now)
            else:
                self._states.move_to_end(key)
            state.tokens = min(
                float(limit.burst), state.tokens + (now - state.updated) * limit.rate_per_s
            )
            state.updated = now
            if state.in_flight >= limit.concurrent:
                raise RateLimited(
                    f"{principal.name!r} has {state.in_flight} calls in flight, the most its "
                    f"role allows; retry when one ends",
                    retry_after_s=0.1,
                )
            if state.tokens < 1.0:
                wait = (1.0 - state.tokens) / limit.rate_per_s
                raise RateLimited(
                    f"{principal.name!r} is over its rate of {limit.rate_per_s:g} calls/s; "
                    f"retry in {wait:.3f} s",
                    retry_after_s=wait,
                )
            state.tokens -= 1.0
            state.in_flight += 1
        return lambda: self._release(key)

    def _release(self, key: tuple[str, str]) -> None:
        with self._lock:
            state = self._states.get(key)
            if state is not None and state.in_flight > 0:
                state.in_flight -= 1

    def _forget_idle(self, now: float) -> None:
        if len(self._states) <= self._max_tracked:
            return
        for key in list(self._states):
            state = self._states[key]
            if state.in_flight == 0:
                del self._states[key]
                if len(self._states) <= self._max_tracked:
                    return


def _nothing() -> None:
    return None
