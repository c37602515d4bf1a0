"""The replica side of the registry's serving state (common.serving.RegistryFollower), on
a stand-in trainer stub: applies the first state and each change once, keeps serving when
a load fails with any error, and tries a refused version again when the state is resent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from clinalign.common.errors import FailedPrecondition
from clinalign.common.serving import RegistryFollower, Target
from clinalign.common.v1 import common_pb2
from clinalign.trainer.v1 import trainer_pb2


def _state(version: str, canary: str = "", share: float = 0.0) -> trainer_pb2.ServingState:
    state = trainer_pb2.ServingState(kind=common_pb2.MODEL_KIND_POLICY, canary_share=share)
    state.stable.ref.version = version
    if canary:
        state.canary.ref.version = canary
    return state


class FakeTrainer:
    """GetServingState answers the first state; WatchServingState streams ``streams``, one
    list of states per connection, each connection ending as a broken stream would."""

    def __init__(self, first: str, streams: list[list[str]]) -> None:
        self.first = first
        self.streams = streams

    async def GetServingState(self, request: Any, **call: Any) -> Any:
        return trainer_pb2.GetServingStateResponse(states=[_state(self.first)], revision=1)

    def WatchServingState(self, request: Any) -> AsyncIterator[Any]:
        versions = self.streams.pop(0) if self.streams else []

        async def stream() -> AsyncIterator[Any]:
            for i, version in enumerate(versions):
                yield trainer_pb2.WatchServingStateResponse(states=[_state(version)], revision=i)
            if not self.streams:
                await asyncio.Event().wait()  # the last connection stays open

        return stream()


class FakeClients:
    def __init__(self, trainer: FakeTrainer) -> None:
        self.trainer = trainer


async def test_the_follower_applies_changes_and_survives_failed_loads() -> None:
    applied: list[str] = []
    failures = {"policy-v3": [RuntimeError("CUDA out of memory"), None]}

    async def apply(target: Target) -> None:
        assert target.stable is not None
        version = target.stable.ref.version
        errors = failures.get(version)
        if errors:
            error = errors.pop(0)
            if error is not None:
                raise error
        applied.append(version)

    # First connection: v1 (already applied), v2, then v3 fails to load; the stream breaks.
    # Second connection resends v3, which now loads.
    trainer = FakeTrainer("policy-v1", [["policy-v1", "policy-v2", "policy-v3"], ["policy-v3"]])
    follower = RegistryFollower(
        FakeClients(trainer),  # type: ignore[arg-type]
        {common_pb2.MODEL_KIND_POLICY: apply},
        retry_s=0.01,
    )
    await follower.sync()
    follower.start()
    for _ in range(200):
        if applied == ["policy-v1", "policy-v2", "policy-v3"]:
            break
        await asyncio.sleep(0.01)
    await follower.stop()
    assert applied == ["policy-v1", "policy-v2", "policy-v3"]


async def test_a_refused_version_at_start_keeps_the_replica_from_serving() -> None:
    async def refuse(target: Target) -> None:
        raise FailedPrecondition("policy-v1: its weights do not match the registry's hash")

    follower = RegistryFollower(
        FakeClients(FakeTrainer("policy-v1", [])),  # type: ignore[arg-type]
        {common_pb2.MODEL_KIND_POLICY: refuse},
    )
    with pytest.raises(FailedPrecondition, match="do not match the registry's hash"):
        await follower.sync()
