"""The reward service process. Without a reward model it runs, answers ListModels, and
reports NOT_SERVING for its service name until one is loaded, at start (``model_path``) or
by ``ActivateModel`` with a registry version resolved through the trainer service. A cost
model (issue 21) is served beside it, loaded the same ways (``cost_model_path``, or
``ActivateModel`` with a cost version); readiness does not wait for one, and a Score call
that asks for costs without one is FAILED_PRECONDITION."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc.aio

from clinalign.common.artefacts import COST, REWARD
from clinalign.common.channels import Clients
from clinalign.common.config import CommonSettings
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.registry_client import resolve_version
from clinalign.common.server import Readiness, run_main
from clinalign.common.serving import (
    Apply,
    RegistryFollower,
    Target,
    require_served,
    verify_weights,
)
from clinalign.common.v1 import common_pb2
from clinalign.reward.batcher import ActiveModel, Batcher, Load
from clinalign.reward.config import RewardSettings
from clinalign.reward.scorer import DEFAULT_NAME, Scorer
from clinalign.reward.servicer import ROLES, SERVICE_CALLERS, RewardServicer
from clinalign.reward.v1 import reward_pb2_grpc


class RewardApp:
    name = "reward"
    full_name = "clinalign.reward.v1.RewardService"
    roles = ROLES
    service_callers = SERVICE_CALLERS

    def __init__(self, common: CommonSettings, settings: RewardSettings) -> None:
        self.common = common
        self.settings = settings
        self.models = ActiveModel(self._loader(common_pb2.MODEL_KIND_REWARD), self._activated)
        self.costs = ActiveModel(self._loader(common_pb2.MODEL_KIND_COST), _nothing, "cost")
        self.servicer = RewardServicer(settings, self.models, self.costs, self.activate)
        self._readiness: Readiness | None = None
        self.clients = Clients(common, service="reward")  # the trainer's registry
        self.follower = RegistryFollower(
            self.clients,
            {
                common_pb2.MODEL_KIND_REWARD: self._follow(self.models),
                common_pb2.MODEL_KIND_COST: self._follow(self.costs),
            },
        )

    def register(self, server: grpc.aio.Server) -> None:
        reward_pb2_grpc.add_RewardServiceServicer_to_server(self.servicer, server)

    async def _start_batcher(
        self,
        path: Path,
        version: str,
        name: str = DEFAULT_NAME,
        digest: str = "",
        kind: str = REWARD,
    ) -> Batcher:
        s = self.settings
        scorer = await asyncio.to_thread(
            Scorer, path, version, s.device, name=name, digest=digest, kind=kind
        )
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

    def _loader(self, kind: common_pb2.ModelKind.ValueType) -> Load:
        """Loads a registry version of ``kind``, resolved through the trainer service."""
        name = COST if kind == common_pb2.MODEL_KIND_COST else REWARD

        async def load(version: str) -> Batcher:
            mv = await resolve_version(self.clients, version, kind)
            await verify_weights(mv)
            if mv.adapter_path:
                raise FailedPrecondition(
                    f"{name} version {version} is a LoRA adapter; the reward service serves "
                    "full sequence-classification model directories"
                )
            return await self._start_batcher(
                Path(mv.artifact_uri),
                version,
                mv.ref.name or f"clinalign-{name}",
                mv.weights_hash,
                name,
            )

        return load

    async def activate(self, version: str) -> Batcher:
        """ActivateModel: loads now the version the registry serves in the slot of its kind
        (a reward version replaces the reward model, a cost version the cost model), and
        refuses any other."""
        if not version:
            raise InvalidArgument("version", "is required: the registry version to serve")
        kinds = (common_pb2.MODEL_KIND_REWARD, common_pb2.MODEL_KIND_COST)
        mv = await resolve_version(self.clients, version, kinds)
        await require_served(self.clients, mv.kind, version)
        slot = self.costs if mv.kind == common_pb2.MODEL_KIND_COST else self.models
        return await slot.activate(version)

    @staticmethod
    def _follow(slot: ActiveModel) -> Apply:
        async def apply(target: Target) -> None:
            if target.stable is not None:  # while the registry serves none, keep what serves
                await slot.activate(target.stable.ref.version)

        return apply

    async def _activated(self) -> None:
        if self._readiness is not None and not self._readiness.ready:
            await self._readiness.set(True)

    async def start(self, readiness: Readiness) -> None:
        self._readiness = readiness
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        s = self.settings
        if s.cost_model_path is not None:
            cost_version = s.cost_model_version or s.cost_model_path.name
            self.costs.serve(await self._start_batcher(s.cost_model_path, cost_version, kind=COST))
        if s.follow_registry:
            await readiness.set(False, "loading the registry's reward model")
            await self.follower.sync()
            self.follower.start()
        if self.models.current is None and s.model_path is not None:
            self.models.serve(await self._start_batcher(s.model_path, s.model_version))
        if self.models.current is None:
            await readiness.set(False, "no reward model active")
            return
        await readiness.set(True)

    async def stop(self) -> None:
        await self.follower.stop()
        await self.models.close()
        await self.costs.close()
        await self.clients.close()


async def _nothing() -> None:
    """Activating a cost model changes no readiness: the service serves rewards without one."""


def main() -> None:
    run_main(RewardApp, RewardSettings)
