"""Keeping a generation or reward replica on what the registry serves.

The trainer's registry is the one record of what serves each kind (the stable version, and
a policy's canary with its share). A replica reads it when it starts and reports SERVING
only once it has loaded it, then follows ``WatchServingState``: the stream sends the whole
state first and again after every change, so a replica that reconnects after a broken
stream or a trainer restart resyncs from the first message it gets. Loading is the
replica's own (``Apply``); a version it cannot load, or whose weights do not match the
registry's hash, leaves it on what it served, counted and logged, and is tried again when
the stream next resends the state (at the latest when the trainer ends the connection,
its maximum age and grace, 35 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio
from prometheus_client import Counter, Gauge

from clinalign.common.channels import Clients
from clinalign.common.errors import ClinAlignError, FailedPrecondition, Unavailable
from clinalign.common.registry_client import resolve_version
from clinalign.common.v1 import common_pb2
from clinalign.trainer.v1 import trainer_pb2

log = logging.getLogger("clinalign.serving")

REFUSED = Counter(
    "clinalign_serving_refused",
    "Registry versions a replica would not serve (weights hash mismatch, load failure).",
    ["kind", "version"],
)
LOADED = Gauge(
    "clinalign_serving_loaded",
    "1 for each registry version a replica serves, by kind and role (stable, canary); with "
    "the share of traffic it gets as clinalign_serving_share.",
    ["kind", "version", "role"],
)
SHARE = Gauge(
    "clinalign_serving_share",
    "Share of a kind's traffic each served registry version gets on this replica.",
    ["kind", "version", "role"],
)
SYNC_TIMEOUT_S = 10.0
MAX_BACKOFF_S = 5.0


@dataclass(frozen=True)
class Target:
    """What one kind should serve, as the registry says."""

    stable: common_pb2.ModelVersion | None
    canary: common_pb2.ModelVersion | None = None
    canary_share: float = 0.0

    @property
    def key(self) -> tuple[str, str, float]:
        return (
            self.stable.ref.version if self.stable else "",
            self.canary.ref.version if self.canary else "",
            self.canary_share,
        )


Apply = Callable[[Target], Awaitable[None]]


def _target(state: trainer_pb2.ServingState) -> Target:
    return Target(
        stable=state.stable if state.HasField("stable") else None,
        canary=state.canary if state.HasField("canary") else None,
        canary_share=state.canary_share,
    )


class RegistryFollower:
    """Applies the registry's serving state of each followed kind, first when asked
    (``sync``) and then at every change (``start``)."""

    def __init__(
        self,
        clients: Clients,
        appliers: Mapping[common_pb2.ModelKind.ValueType, Apply],
        *,
        retry_s: float = 0.5,
    ) -> None:
        self._clients = clients
        self._appliers = dict(appliers)
        self._retry_s = retry_s
        self._applied: dict[common_pb2.ModelKind.ValueType, tuple[str, str, float]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.revision = 0

    async def sync(self) -> None:
        """Reads the serving state and applies it; retries until the trainer answers.
        Errors of loading propagate: a replica that cannot load what the registry serves
        must not report SERVING."""
        delay = self._retry_s
        while True:
            try:
                reply = await self._clients.trainer.GetServingState(
                    trainer_pb2.GetServingStateRequest(history_limit=1), timeout=SYNC_TIMEOUT_S
                )
                break
            except grpc.aio.AioRpcError as err:
                log.warning("registry unreachable", extra={"fields": {"code": err.code().name}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        await self._apply(reply.states, reply.revision, strict=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="registry-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        delay = self._retry_s
        while True:
            try:
                stream = self._clients.trainer.WatchServingState(
                    trainer_pb2.WatchServingStateRequest()
                )
                async for message in stream:
                    delay = self._retry_s
                    await self._apply(message.states, message.revision, strict=False)
            except grpc.aio.AioRpcError as err:
                log.warning(
                    "serving-state watch broke; resyncing",
                    extra={"fields": {"code": err.code().name, "retry_s": delay}},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    @staticmethod
    def _export(
        kind: str, before: tuple[str, str, float] | None, after: tuple[str, str, float]
    ) -> None:
        for role, version, _ in _roles(before) if before else []:
            LOADED.remove(kind, version, role)
            SHARE.remove(kind, version, role)
        for role, version, share in _roles(after):
            LOADED.labels(kind, version, role).set(1)
            SHARE.labels(kind, version, role).set(share)

    async def _apply(
        self, states: Sequence[trainer_pb2.ServingState], revision: int, *, strict: bool
    ) -> None:
        async with self._lock:  # one change at a time, in the order the registry made them
            for state in states:
                apply = self._appliers.get(state.kind)
                target = _target(state)
                if apply is None or self._applied.get(state.kind) == target.key:
                    continue
                try:
                    await apply(target)
                except Exception as err:  # a refusal, or a load that failed: keep serving
                    REFUSED.labels(_kind_name(state.kind), target.key[0]).inc()
                    reason = err.message if isinstance(err, ClinAlignError) else type(err).__name__
                    log.error(
                        "registry version not served",
                        extra={"fields": {"version": target.key[0], "error": reason}},
                    )
                    if strict:
                        raise
                    continue
                self._export(_kind_name(state.kind), self._applied.get(state.kind), target.key)
                self._applied[state.kind] = target.key
                log.info(
                    "serving the registry's version",
                    extra={
                        "fields": {
                            "stable": target.key[0],
                            "canary": target.key[1],
                            "revision": revision,
                        }
                    },
                )
            self.revision = revision


def _roles(key: tuple[str, str, float]) -> list[tuple[str, str, float]]:
    stable, canary, share = key
    roles = [("stable", stable, 1.0 - share)] if stable else []
    return roles + ([("canary", canary, share)] if canary else [])


def _kind_name(kind: common_pb2.ModelKind.ValueType) -> str:
    return common_pb2.ModelKind.Name(kind).removeprefix("MODEL_KIND_").lower()


async def registry_target(clients: Clients, kind: common_pb2.ModelKind.ValueType) -> Target:
    """What the registry serves for ``kind`` now."""
    try:
        reply = await clients.trainer.GetServingState(
            trainer_pb2.GetServingStateRequest(history_limit=1), timeout=SYNC_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as err:
        raise Unavailable(f"model registry (trainer service) failed: {err.code().name}") from None
    for state in reply.states:
        if state.kind == kind:
            return _target(state)
    return Target(None)


async def require_served(
    clients: Clients,
    kind: common_pb2.ModelKind.ValueType,
    version: str,
    canary: str = "",
    canary_share: float = 0.0,
) -> Target:
    """The registry's target for ``kind`` if it is what the caller asked a replica to serve;
    else FAILED_PRECONDITION saying what the gate decided about ``version`` and how what
    serves changes (PromoteModel, RollbackModel). A replica takes no other orders."""
    target = await registry_target(clients, kind)
    if target.key == (version, canary, canary_share):
        return target
    served = target.key[0] or "nothing"
    if version == target.key[0]:
        raise FailedPrecondition(
            f"the registry serves {version} with canary {target.key[1] or 'none'} at "
            f"{target.key[2]:.0%}; change the canary with PromoteModel (canary_share) or "
            "RollbackModel"
        )
    stage = (await resolve_version(clients, version, kind)).stage
    why = {
        common_pb2.MODEL_STAGE_REJECTED: "the promotion gate refused it",
        common_pb2.MODEL_STAGE_REGISTERED: "it has not been through the promotion gate; "
        "PromoteModel runs the gate and serves it if it passes",
        common_pb2.MODEL_STAGE_RETIRED: "it passed the gate once and has since been replaced; "
        "RollbackModel or PromoteModel change what serves",
        common_pb2.MODEL_STAGE_CANARY: "it is the canary, served beside the stable version",
    }.get(stage, "the registry does not serve it")
    raise FailedPrecondition(
        f"{version} is not what the registry serves ({served}): {why}. Replicas serve only "
        "the registry's versions"
    )


async def verify_weights(version: common_pb2.ModelVersion) -> None:
    """Refuses a version whose weight files do not hash to what the registry recorded at
    registration (base and adapter together for a LoRA adapter)."""
    from pathlib import Path

    from clinalign.common.hashing import version_hash

    def digest() -> str:
        base = Path(version.base_model) if version.adapter_path else None
        return version_hash(Path(version.adapter_path or version.artifact_uri), base)

    try:
        found = await asyncio.to_thread(digest)
    except OSError as err:
        raise FailedPrecondition(
            f"{version.ref.version}: its weights cannot be read ({type(err).__name__})"
        ) from None
    if found != version.weights_hash:
        raise FailedPrecondition(
            f"{version.ref.version}: its weights do not match the registry's hash (registered "
            f"{version.weights_hash[:12]}, found {found[:12]}); refusing to serve it"
        )
