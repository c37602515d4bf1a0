"""The demo's gRPC clients: one channel per service and role, and the few calls the
demonstration composes (submit a job and wait for it, promote and activate a version).

Every call goes to a real service process over loopback; nothing here touches a store or
a model directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clinalign.common.auth import Role
from clinalign.common.channels import Clients
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.demo.ehr import EhrCalls
from clinalign.generation.v1 import generation_pb2
from clinalign.reward.v1 import reward_pb2
from clinalign.trainer.v1 import trainer_pb2

Echo = Callable[[str], Any]
JOB_DONE = (
    trainer_pb2.JOB_STATE_SUCCEEDED,
    trainer_pb2.JOB_STATE_FAILED,
    trainer_pb2.JOB_STATE_CANCELLED,
)


# The demo's labelling tool: stores prompts and drafts and queues tasks (role service).
LABELLING_TOOL = "demo-labelling-tool"


class DemoError(RuntimeError):
    """A pipeline step failed; the message says which and why."""


@dataclass
class Peers:
    """Stubs for the five services, each through ``Clients`` authenticated as the role a
    real caller of that RPC has: the ML engineer trains and promotes, the EHR system
    generates, the labelling tool (role ``service``) stores prompts and answers, each
    simulated clinician labels and flags with a token of their own (as themselves); and
    the simulated EHR's calls to the CDS Hooks gateway (``cds``)."""

    common: CommonSettings
    clinician_tokens: dict[str, str]
    # the simulated EHR's CDS Hooks calls to the gateway (HTTP, its own JWTs)
    cds: EhrCalls | None = None
    _clients: list[Clients] = field(default_factory=list)

    def __post_init__(self) -> None:
        def clients(**who: Any) -> Clients:
            self._clients.append(Clients(self.common, **who))
            return self._clients[-1]

        engineer = clients(role=Role.ML_ENGINEER)
        self.trainer = engineer.trainer
        tool = self.clinician_tokens.get(LABELLING_TOOL)
        self.preference = (clients(token=tool) if tool else clients(role=Role.SERVICE)).preference
        self.preference_admin = engineer.preference
        self.generation = engineer.generation
        self.ehr = clients(role=Role.EHR_CLIENT).generation
        self.reward = engineer.reward
        self.monitor = engineer.monitor
        by_clinician = {
            name: clients(token=t)
            for name, t in self.clinician_tokens.items()
            if name != LABELLING_TOOL
        }
        self.clinicians = {name: c.monitor for name, c in by_clinician.items()}
        self.clinician_preference = {name: c.preference for name, c in by_clinician.items()}

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients))
        if self.cds is not None:
            await self.cds.close()

    # -- trainer ---------------------------------------------------------------------------

    async def run_job(self, spec: trainer_pb2.JobSpec, echo: Echo, label: str) -> trainer_pb2.Job:
        """Submits a job and follows it to the end; raises DemoError unless it succeeds."""
        job = (await self.trainer.SubmitJob(trainer_pb2.SubmitJobRequest(spec=spec))).job
        echo(f"   {label}: job {job.id} submitted")
        last_report = 0.0
        loop = asyncio.get_running_loop()
        while job.state not in JOB_DONE:
            await asyncio.sleep(1.0)
            job = (await self.trainer.GetJob(trainer_pb2.GetJobRequest(id=job.id))).job
            if loop.time() - last_report > 15 and job.total_steps:
                last_report = loop.time()
                echo(f"      step {job.step}/{job.total_steps}")
        if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
            state = trainer_pb2.JobState.Name(job.state)
            raise DemoError(f"{label} job {job.id} ended {state}: {job.failure_reason}")
        return job

    async def version(self, version: str) -> common_pb2.ModelVersion:
        return (
            await self.trainer.GetModelVersion(trainer_pb2.GetModelVersionRequest(version=version))
        ).version

    async def promote(self, version: str, echo: Echo) -> bool:
        """Asks the trainer's gate to promote ``version`` and prints every check."""
        resp = await self.trainer.PromoteModel(
            trainer_pb2.PromoteModelRequest(version=version), timeout=600
        )
        verdict = "PROMOTED" if resp.promoted else "REFUSED"
        echo(f"   gate on {version}: {verdict}")
        for check in resp.checks:
            echo(f"      {'ok ' if check.passed else 'NO '} {check.name}: {check.message}")
        return bool(resp.promoted)

    async def activate_policy(self, version: str) -> None:
        await self.generation.ActivateModel(
            generation_pb2.ActivateModelRequest(version=version), timeout=300
        )

    async def activate_reward(self, version: str) -> None:
        await self.reward.ActivateModel(
            reward_pb2.ActivateModelRequest(version=version), timeout=300
        )
