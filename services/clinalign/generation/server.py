"""The generation service process: loads the policy, serves it, reports to the monitor."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio

from clinalign.common.channels import Clients
from clinalign.common.config import CommonSettings
from clinalign.common.errors import FailedPrecondition
from clinalign.common.prompts import render_user_prompt
from clinalign.common.registry_client import resolve_version
from clinalign.common.server import Readiness, run_main
from clinalign.common.serving import RegistryFollower, Target, require_served, verify_weights
from clinalign.common.v1 import common_pb2
from clinalign.generation.backend import Backend
from clinalign.generation.config import GenerationSettings
from clinalign.generation.engine import LocalBackend
from clinalign.generation.reporter import MonitorReporter
from clinalign.generation.router import Router
from clinalign.generation.servicer import ROLES, SERVICE_CALLERS, GenerationServicer
from clinalign.generation.spool import OutputSpool
from clinalign.generation.usecases import Generation
from clinalign.generation.v1 import generation_pb2_grpc
from clinalign.monitor.v1 import monitor_pb2

MONITOR_TIMEOUT_S = 10.0
REMOTE_SWITCH = (
    "backend=remote serves the model its TGI/vLLM server loaded; switch versions by "
    "redeploying that server (or run backend=local)"
)


class GenerationApp:
    name = "generation"
    full_name = "clinalign.generation.v1.GenerationService"
    roles = ROLES
    service_callers = SERVICE_CALLERS

    def __init__(self, common: CommonSettings, settings: GenerationSettings) -> None:
        self.common = common
        self.settings = settings
        self.model_path = settings.model_path or common.data_dir / "models" / "foundation"
        self.clients = Clients(
            common, service="generation"
        )  # the monitor and the trainer's registry
        self.reporter: MonitorReporter | None = None
        if settings.report_to_monitor:
            spool = OutputSpool(
                settings.monitor_spool_path or common.data_dir / "spool" / "generation.db",
                settings.monitor_buffer,
            )
            self.reporter = MonitorReporter(
                self._send_to_monitor, spool, batch=settings.monitor_batch
            )
        self.router = Router(self._load_version)
        self.follower = RegistryFollower(
            self.clients, {common_pb2.MODEL_KIND_POLICY: self._serve_target}
        )
        self.generation = Generation(settings, self.router, self.reporter, self._activate)
        self.servicer = GenerationServicer(self.generation)

    async def _send_to_monitor(self, batch: list[monitor_pb2.ProductionOutput]) -> None:
        await self.clients.monitor.RecordOutputs(
            monitor_pb2.RecordOutputsRequest(outputs=batch), timeout=MONITOR_TIMEOUT_S
        )

    def _local(
        self, path: Path, version: str, adapter: Path | None = None, digest: str = ""
    ) -> LocalBackend:
        s = self.settings
        return LocalBackend(
            path,
            name=s.model_name,
            version=version,
            device=s.device,
            max_queue=s.max_queue,
            max_batch=s.max_batch_size,
            adapter=adapter,
            weights_hash=digest,
        )

    def _initial_backend(self) -> Backend:
        s = self.settings
        if s.backend == "remote":
            from clinalign.generation.remote import RemoteBackend

            return RemoteBackend(
                s,
                name=s.model_name,
                version=s.model_version,
                render=_chat_renderer(self.model_path),
            )
        return self._local(self.model_path, s.model_version)

    async def _load_version(self, version: str) -> Backend:
        """Resolves a registry version through the trainer service and loads it."""
        if self.settings.backend == "remote":
            raise FailedPrecondition(REMOTE_SWITCH)
        mv = await resolve_version(self.clients, version, common_pb2.MODEL_KIND_POLICY)
        await verify_weights(mv)
        if mv.adapter_path:
            backend = self._local(
                Path(mv.base_model), version, Path(mv.adapter_path), mv.weights_hash
            )
        else:
            backend = self._local(Path(mv.artifact_uri), version, None, mv.weights_hash)
        await backend.start()
        return backend

    async def _serve_target(self, target: Target) -> None:
        """Serves the registry's policy (and canary); while it serves none, the configured
        model (the foundation)."""
        if target.stable is None:
            if not self.router.ready:
                backend = self._initial_backend()
                await backend.start()
                self.router.serve(backend)
            return
        canary = target.canary.ref.version if target.canary else ""
        await self.router.activate(target.stable.ref.version, canary, target.canary_share)

    async def _activate(self, version: str, canary: str, fraction: float) -> None:
        """ActivateModel: loads now what the registry serves, and nothing else."""
        if self.settings.backend == "remote":
            raise FailedPrecondition(REMOTE_SWITCH)
        target = await require_served(
            self.clients, common_pb2.MODEL_KIND_POLICY, version, canary, fraction
        )
        await self._serve_target(target)

    def register(self, server: grpc.aio.Server) -> None:
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness: Readiness) -> None:
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        if self.settings.follow_registry:
            await readiness.set(False, "loading the registry's policy")
            await self.follower.sync()
            self.follower.start()
        else:
            backend = self._initial_backend()
            await backend.start()
            self.router.serve(backend)
        if self.reporter is not None:
            self.reporter.start()
        await readiness.set(True)

    async def stop(self) -> None:
        await self.follower.stop()
        await self.router.close()
        if self.reporter is not None:
            await self.reporter.stop()
        await self.clients.close()


def _chat_renderer(model_path: Path) -> Callable[[str], str] | None:
    """The served model's chat template, when its tokenizer is mounted beside the service
    (TGI's /generate takes raw text; an OpenAI-compatible server applies it itself)."""
    if not (model_path / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not getattr(tokenizer, "chat_template", None):
        return None

    return functools.partial(render_user_prompt, tokenizer)


def main() -> None:
    run_main(GenerationApp, GenerationSettings)
