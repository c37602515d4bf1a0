"""The reward service process. Without a reward model it runs, answers ListModels, and
reports NOT_SERVING for its service name until one is loaded, at start (``model_path``) or
by ``ActivateModel`` with a registry version resolved through the trainer service."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc.aio

from clinalign.common.channels import Clients
from clinalign.common.config import CommonSettings
from clinalign.common.errors import FailedPrecondition
from clinalign.common.registry_client import resolve_version
from clinalign.common.server import Readiness, run_main
from clinalign.common.v1 import common_pb2
from clinalign.reward.batcher import ActiveModel, Batcher
from clinalign.reward.config import RewardSettings
from clinalign.reward.scorer import DEFAULT_NAME, Scorer
from clinalign.reward.servicer import ROLES, RewardServicer
from clinalign.reward.v1 import reward_pb2_grpc


class RewardApp:
    name = "reward"
    full_name = "clinalign.reward.v1.RewardService"
    roles = ROLES

    def __init__(self, common: CommonSettings, settings: RewardSettings) -> None:
        self.common = common
        self.settings = settings
        self.models = ActiveModel(self._load_version, self._activated)
        self.servicer = RewardServicer(settings, self.models)
        self._readiness: Readiness | None = None
        self.clients = Clients(common)  # the trainer's registry

    def register(self, server: grpc.aio.Server) -> None:
        reward_pb2_grpc.add_RewardServiceServicer_to_server(self.servicer, server)

    async def _start_batcher(
        self, path: Path, version: str, name: str = DEFAULT_NAME, digest: str = ""
    ) -> Batcher:
        s = self.settings
        scorer = await asyncio.to_thread(Scorer, path, version, s.device, name=name, digest=digest)
        batcher = Batcher(
            scorer,
            max_batch_pairs=s.max_batch_pairs,
            max_batch_tokens=s.max_batch_tokens,
            batch_wait_s=s.batch_wait_ms / 1000,
            max_queue_pairs=s.max_queue_pairs,
            loop=asyncio.get_running_loop(),
        )
        batcher.start()
        return batcher

    async def _load_version(self, version: str) -> Batcher:
        """Resolves a registry version through the trainer service and loads it."""
        mv = await resolve_version(self.clients, version, common_pb2.MODEL_KIND_REWARD)
        if mv.adapter_path:
            raise FailedPrecondition(
                f"reward version {version} is a LoRA adapter; the reward service serves "
                "full sequence-classification model directories"
            )
        return await self._start_batcher(
            Path(mv.artifact_uri), version, mv.ref.name or DEFAULT_NAME, mv.weights_hash
        )

    async def _activated(self) -> None:
        if self._readiness is not None and not self._readiness.ready:
            await self._readiness.set(True)

    async def start(self, readiness: Readiness) -> None:
        self._readiness = readiness
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        path = self.settings.model_path
        if path is None:
            await readiness.set(False, "no reward model active")
            return
        self.models.serve(await self._start_batcher(path, self.settings.model_version))
        await readiness.set(True)

    async def stop(self) -> None:
        await self.models.close()
        await self.clients.close()


def main() -> None:
    run_main(RewardApp, RewardSettings)
