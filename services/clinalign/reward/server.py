"""The reward service process. Without a reward model it runs, answers ListModels, and
reports NOT_SERVING for its service name until one is loaded."""

from __future__ import annotations

import asyncio

import grpc.aio

from clinalign.common.config import CommonSettings
from clinalign.common.server import Readiness, run_main
from clinalign.reward.config import RewardSettings
from clinalign.reward.scorer import Scorer
from clinalign.reward.servicer import ROLES, RewardServicer
from clinalign.reward.v1 import reward_pb2_grpc


class RewardApp:
    name = "reward"
    full_name = "clinalign.reward.v1.RewardService"
    roles = ROLES

    def __init__(self, common: CommonSettings, settings: RewardSettings) -> None:
        self.settings = settings
        self.servicer = RewardServicer(settings)

    def register(self, server: grpc.aio.Server) -> None:
        reward_pb2_grpc.add_RewardServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness: Readiness) -> None:
        path = self.settings.model_path
        if path is None:
            await readiness.set(False, "no reward model active")
            return
        self.servicer.scorer = await asyncio.to_thread(
            Scorer, path, self.settings.model_version, self.settings.device
        )
        await readiness.set(True)

    async def stop(self) -> None:
        self.servicer.scorer = None


def main() -> None:
    run_main(RewardApp, RewardSettings)
