"""gRPC surface of the reward service."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc.aio

from clinalign.common.auth import ALL_ROLES, Role, roles
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.v1 import common_pb2
from clinalign.reward.config import RewardSettings
from clinalign.reward.scorer import Scorer
from clinalign.reward.v1 import reward_pb2, reward_pb2_grpc

_SVC = "/clinalign.reward.v1.RewardService/"
_SCORE = roles(Role.SERVICE, Role.ML_ENGINEER)
ROLES: Mapping[str, frozenset[Role]] = {
    _SVC + "Score": _SCORE,
    _SVC + "ScoreStream": _SCORE,
    _SVC + "ListModels": ALL_ROLES,
    _SVC + "ActivateModel": _SCORE,
}


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Score and ListModels are live; server-side batching across callers, streaming and
    hot swapping arrive with the reward issue."""

    def __init__(self, settings: RewardSettings) -> None:
        self.settings = settings
        self.scorer: Scorer | None = None

    def _validate(self, items: list[reward_pb2.ScoreItem]) -> list[tuple[str, str]]:
        if not items:
            raise InvalidArgument("items", "must hold at least one pair")
        if len(items) > self.settings.max_batch:
            raise InvalidArgument(
                "items", f"holds {len(items)} pairs; at most {self.settings.max_batch} per call"
            )
        limit = self.settings.max_text_chars
        for i, item in enumerate(items):
            if not item.response.strip():
                raise InvalidArgument(f"items[{i}].response", "must not be empty")
            for name in ("prompt", "response"):
                if len(getattr(item, name)) > limit:
                    raise InvalidArgument(f"items[{i}].{name}", f"longer than {limit} characters")
        return [(item.prompt, item.response) for item in items]

    async def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreResponse:
        pairs = self._validate(list(request.items))
        scorer = self.scorer
        if scorer is None:
            raise FailedPrecondition("no reward model is active; train one and ActivateModel")
        scored = await asyncio.to_thread(scorer.score, pairs, request.truncate)
        return reward_pb2.ScoreResponse(
            results=[
                reward_pb2.ScoreResult(score=s.score, raw_score=s.raw_score, truncated=s.truncated)
                for s in scored
            ],
            model_version=scorer.info.version,
        )

    async def ListModels(
        self, request: reward_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ListModelsResponse:
        if self.scorer is None:
            return reward_pb2.ListModelsResponse()
        info = self.scorer.info
        model = common_pb2.ModelVersion(
            ref=common_pb2.ModelRef(name="clinalign-reward", version=info.version),
            kind=common_pb2.MODEL_KIND_REWARD,
            stage=common_pb2.MODEL_STAGE_SERVING,
            artifact_uri=str(info.path),
            weights_hash=info.weights_hash,
        )
        return reward_pb2.ListModelsResponse(models=[model], active_version=info.version)
