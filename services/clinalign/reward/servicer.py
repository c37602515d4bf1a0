"""gRPC surface of the reward service: protobuf → the scoring use case (``usecases``) →
protobuf.

ScoreStream answers each request message with one response message, in order, and
scores up to ``STREAM_WINDOW`` of a stream's messages at once so that a long stream keeps
the batcher busy. An error in a message ends the stream after the responses to the
messages before it; its status message starts with the message's 0-based index on the
stream, then the field: ``message 2: items[0].response: must not be empty``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc.aio

from clinalign.common.artefacts import COST
from clinalign.common.auth import ALL_ROLES, ANY_SERVICE, Role, ServiceCallers, roles
from clinalign.common.errors import ClinAlignError
from clinalign.common.v1 import common_pb2
from clinalign.reward import usecases
from clinalign.reward.batcher import ActiveModel, Batcher
from clinalign.reward.config import RewardSettings
from clinalign.reward.v1 import reward_pb2, reward_pb2_grpc

_SVC = "/clinalign.reward.v1.RewardService/"
_SCORE = roles(Role.SERVICE, Role.ML_ENGINEER)
ROLES: Mapping[str, frozenset[Role]] = {
    _SVC + "Score": _SCORE,
    _SVC + "ScoreStream": _SCORE,
    _SVC + "ListModels": ALL_ROLES,
    _SVC + "ActivateModel": _SCORE,
}

# Which ClinAlign services' own credentials may call the RPCs role service may call: the
# monitor scores production outputs and activates versions, training jobs score rollouts.
SERVICE_CALLERS: ServiceCallers = {
    _SVC + "Score": frozenset({"monitor", "trainer-job"}),
    _SVC + "ScoreStream": frozenset({"monitor", "trainer-job"}),
    _SVC + "ListModels": ANY_SERVICE,
    _SVC + "ActivateModel": frozenset({"monitor"}),
}
STREAM_WINDOW = 4  # messages of one ScoreStream being scored at once


def model_version_pb(batcher: Batcher) -> common_pb2.ModelVersion:
    info = batcher.info
    cost = batcher.scorer.kind == COST
    return common_pb2.ModelVersion(
        ref=common_pb2.ModelRef(name=info.name, version=info.version),
        kind=common_pb2.MODEL_KIND_COST if cost else common_pb2.MODEL_KIND_REWARD,
        stage=common_pb2.MODEL_STAGE_SERVING,
        artifact_uri=str(info.path),
        weights_hash=info.weights_hash,
    )


def _results(scores: usecases.Scores) -> list[reward_pb2.ScoreResult]:
    results = [
        reward_pb2.ScoreResult(score=s.score, raw_score=s.raw_score, truncated=s.truncated)
        for s in scores.scored
    ]
    for result, cost in zip(results, scores.costs or (), strict=False):
        result.cost = cost
    return results


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(
        self,
        settings: RewardSettings,
        models: ActiveModel,
        costs: ActiveModel,
        activate: Callable[[str], Awaitable[Batcher]],
    ) -> None:
        self.settings = settings
        self.models = models
        self.costs = costs  # the cost-model slot
        self.activate = activate  # a registry version into the slot of its kind

    async def _score(
        self, items: Sequence[reward_pb2.ScoreItem], truncate: bool, include_cost: bool
    ) -> usecases.Scores:
        pairs = [(item.prompt, item.response) for item in items]
        costs = self.costs if include_cost else None
        return await usecases.score(self.models, self.settings, pairs, truncate, costs)

    async def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreResponse:
        scores = await self._score(request.items, request.truncate, request.include_cost)
        return reward_pb2.ScoreResponse(
            results=_results(scores),
            model_version=scores.version,
            cost_model_version=scores.cost_version,
        )

    async def ScoreStream(
        self,
        request_iterator: AsyncIterator[reward_pb2.ScoreStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[reward_pb2.ScoreStreamResponse]:
        window = asyncio.Semaphore(STREAM_WINDOW)
        order: asyncio.Queue[asyncio.Task[reward_pb2.ScoreStreamResponse] | None] = asyncio.Queue()

        async def one(i: int, req: reward_pb2.ScoreStreamRequest) -> reward_pb2.ScoreStreamResponse:
            try:
                scores = await self._score(req.items, req.truncate, req.include_cost)
            except ClinAlignError as exc:
                exc.message = f"message {i}: {exc.message}"
                exc.args = (exc.message,)
                raise
            return reward_pb2.ScoreStreamResponse(
                results=_results(scores),
                model_version=scores.version,
                cost_model_version=scores.cost_version,
            )

        async def read() -> None:
            try:
                i = 0
                async for req in request_iterator:
                    await window.acquire()
                    order.put_nowait(asyncio.create_task(one(i, req)))
                    i += 1
            finally:
                order.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await order.get()) is not None:
                response = await task
                window.release()
                yield response
            await reader  # a failed read ends the stream with its error
        finally:
            reader.cancel()
            unanswered: list[asyncio.Task[Any]] = [reader]
            while not order.empty():
                if (task := order.get_nowait()) is not None:
                    task.cancel()
                    unanswered.append(task)
            await asyncio.gather(*unanswered, return_exceptions=True)

    async def ListModels(
        self, request: reward_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ListModelsResponse:
        reward, cost = self.models.current, self.costs.current
        return reward_pb2.ListModelsResponse(
            models=[model_version_pb(b) for b in (reward, cost) if b is not None],
            active_version=reward.info.version if reward else "",
            active_cost_version=cost.info.version if cost else "",
        )

    async def ActivateModel(
        self, request: reward_pb2.ActivateModelRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ActivateModelResponse:
        batcher = await self.activate(request.version)
        return reward_pb2.ActivateModelResponse(model=model_version_pb(batcher))
