"""The trainer's use cases, one method per RPC, transport-free: each validates its input
(``InvalidArgument`` naming the field), owns its transaction and invariants, and calls the
job store, the executors, the registry and the promotion gate. The servicer only converts
between protobuf and these types.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from clinalign.common.artefacts import KINDS
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.judging import Judge
from clinalign.common.pagination import next_token, page_bounds
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs import ppo_job, supervised
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.jobs.executor import Executors
from clinalign.trainer.registry import gate
from clinalign.trainer.registry.policy_gate import ReplayFetcher
from clinalign.trainer.registry.versions import (
    MAX_CANARY_SHARE,
    GateDecision,
    ModelVersion,
    Registry,
    ServingChange,
    ServingState,
)

# How each runnable kind checks its spec and resolves its inputs at submission.
SPEC_CHECKS: dict[str, Callable[[Session, dict[str, Any]], dict[str, Any]]] = {
    "reward_model": supervised.check_reward_model_spec,
    "sft": supervised.check_sft_spec,
    "dpo": supervised.check_dpo_spec,
    "cost_model": supervised.check_cost_model_spec,
    "ppo": ppo_job.check_ppo_spec,
}
JOB_KIND_NAMES = (
    "JOB_KIND_SFT, JOB_KIND_REWARD_MODEL, JOB_KIND_PPO, JOB_KIND_DPO, JOB_KIND_COST_MODEL"
)
MODEL_KIND_NAMES = "MODEL_KIND_POLICY, MODEL_KIND_REWARD or MODEL_KIND_COST"
MAX_REASON_CHARS = 1000
DEFAULT_HISTORY, MAX_HISTORY = 20, 500


def check_reason(reason: str) -> None:
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidArgument("reason", f"is longer than {MAX_REASON_CHARS} characters")


@dataclass(frozen=True)
class ServingSnapshot:
    states: list[ServingState]
    history: list[ServingChange]
    revision: int


class Trainer:
    """The use cases over the trainer's store, registry, executors and gate. For the
    promotion gate, ``fetch_snapshot`` reads a preference snapshot (reward models),
    ``judges`` judge policies and ``replay`` fetches the monitor's confirmed flags; without
    them PromoteModel fails its precondition."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        executor: Executors,
        settings: TrainerSettings,
        fetch_snapshot: gate.SnapshotFetcher | None = None,
        judges: tuple[Judge, ...] = (),
        replay: ReplayFetcher | None = None,
    ) -> None:
        self.db = db
        self.registry = registry
        self.executor = executor
        self.settings = settings
        self.fetch_snapshot = fetch_snapshot
        self.judges = judges
        self.replay = replay if settings.gate_replay else None

    # -- jobs

    async def submit_job(
        self, kind: str, executor: str, spec: dict[str, Any], key: str, caller: str = ""
    ) -> tuple[jobs.Job, bool]:
        """(the job, whether an earlier submission with the same idempotency key is
        replayed). ``spec`` is the JobSpec in protobuf JSON form; ``executor`` "" means the
        trainer's default. The spec is checked and its inputs resolved before anything is
        written, so a bad spec leaves no job behind."""
        # Keys are each caller's own; a key stored before they were (the raw key) is still
        # found, and with another spec refused like any other.
        raw, key = key, jobs.scoped_key(caller, key) if key else ""
        if key:
            found = await self.db.run_sync(
                lambda s: jobs.find_by_key(s, key, spec) or jobs.find_by_key(s, raw, spec)
            )
            if found is not None:
                return found, True
        if kind not in SPEC_CHECKS:
            raise InvalidArgument("spec.kind", f"is required: one of {JOB_KIND_NAMES}")
        executor = executor or str(self.settings.executor)
        if not self.executor.runs(executor):
            raise FailedPrecondition(
                f"spec.executor: the {executor} executor is not available yet on this "
                "trainer: set CLINALIGN_TRAINER_KUBERNETES_ENABLED=true and its "
                "CLINALIGN_TRAINER_KUBERNETES_* settings, or use EXECUTOR_KIND_LOCAL"
            )
        check = SPEC_CHECKS[kind]
        inputs = await self.db.run_sync(lambda s: check(s, spec))
        job, replayed = await self.db.run_write(
            lambda s: jobs.submit(s, kind, executor, spec, inputs, key)
        )
        if not replayed:
            await self.executor.kick()
            job = await self.db.run_sync(lambda s: jobs.get(s, job.id))
        return job, replayed

    async def get_job(self, job_id: str) -> jobs.Job:
        if not job_id:
            raise InvalidArgument("id", "is required")
        return await self.db.run_sync(lambda s: jobs.get(s, job_id))

    async def list_jobs(
        self, states: list[str | None], kinds: list[str | None], page_size: int, page_token: str
    ) -> tuple[list[jobs.Job], str]:
        """A page of jobs, newest first; ``None`` in ``states`` or ``kinds`` stands for a
        value the caller sent that names no state or kind."""
        limit, offset = page_bounds(page_size, page_token)
        if None in states:
            raise InvalidArgument("states", "holds an unknown or unspecified job state")
        if None in kinds:
            raise InvalidArgument("kinds", "holds an unknown or unspecified job kind")
        found = await self.db.run_sync(
            lambda s: jobs.list_jobs(
                s, [x for x in states if x], [x for x in kinds if x], limit, offset
            )
        )
        return found, next_token(offset, limit, len(found))

    async def cancel_job(self, job_id: str) -> jobs.Job:
        if not job_id:
            raise InvalidArgument("id", "is required")
        return await self.executor.cancel(job_id)

    async def watch_job(self, job_id: str) -> AsyncIterator[tuple[jobs.Job, Mapping[str, float]]]:
        if not job_id:
            raise InvalidArgument("id", "is required")
        async for job, step_metrics in jobs.watch(self.db, job_id, self.settings.watch_poll_s):
            yield job, step_metrics

    # -- the registry

    async def register_model(self, path: str, kind: str, serve_if_none: bool) -> ModelVersion:
        if not path:
            raise InvalidArgument("path", "is required: a model directory readable by the trainer")
        if kind not in KINDS:
            raise InvalidArgument("kind", f"must be {MODEL_KIND_NAMES}")
        return await self.db.run_sync(
            lambda s: self.registry.register(s, Path(path), kind, serve_if_none=serve_if_none)
        )

    async def get_model_version(self, version: str) -> tuple[ModelVersion, str, list[GateDecision]]:
        """(the version, its manifest as JSON, the gate's decisions about it, oldest
        first)."""
        if not version:
            raise InvalidArgument("version", "is required")

        def read(session: Session) -> tuple[ModelVersion, list[GateDecision]]:
            return self.registry.get(session, version), self.registry.decisions(session, version)

        mv, decisions = await self.db.run_sync(read)
        return mv, json.dumps(mv.manifest), decisions

    async def list_model_versions(
        self, kind: str | None, page_size: int, page_token: str
    ) -> tuple[list[ModelVersion], str]:
        """A page of versions; ``kind`` None lists every kind."""
        limit, offset = page_bounds(page_size, page_token)
        if kind is not None and kind not in KINDS:
            raise InvalidArgument("kind", f"unknown model kind {kind}")
        versions = await self.db.run_sync(lambda s: self.registry.list(s, kind, limit, offset))
        return versions, next_token(offset, limit, len(versions))

    async def promote_model(
        self, version: str, principal: str, canary_share: float = 0.0, reason: str = ""
    ) -> gate.Decision:
        """Runs the gate on ``version``; if it passes, it serves (or becomes the canary)."""
        if not version:
            raise InvalidArgument("version", "is required: the registry version to promote")
        check_reason(reason)
        if canary_share:
            if not 0 < canary_share <= MAX_CANARY_SHARE:
                raise InvalidArgument("canary_share", f"must be in (0, {MAX_CANARY_SHARE}]")
            mv = await self.db.run_sync(lambda s: self.registry.get(s, version))
            if mv.kind != "policy":
                raise InvalidArgument(
                    "canary_share", f"canaries are for policies; {version} is a {mv.kind} model"
                )
        return await gate.promote(
            self.db,
            self.registry,
            version,
            self.fetch_snapshot,
            principal=principal,
            judges=self.judges,
            replay=self.replay,
            policy_settings=self.settings.policy_gate,
            reward_margin=self.settings.gate_reward_margin,
            cost_margin=self.settings.gate_cost_margin,
            canary_share=canary_share,
            reason=reason,
        )

    async def rollback_model(
        self, kind: str, principal: str = "", reason: str = ""
    ) -> ModelVersion:
        """Ends the kind's canary if it has one, else serves the previous version again."""
        if kind not in KINDS:
            raise InvalidArgument("kind", f"must be {MODEL_KIND_NAMES}")
        check_reason(reason)
        return await self.db.run_write(lambda s: self.registry.rollback(s, kind, principal, reason))

    async def serving_state(self, history_limit: int) -> ServingSnapshot:
        """Every kind's serving state, the newest changes (newest first) and the revision."""
        if not 0 <= history_limit <= MAX_HISTORY:
            raise InvalidArgument("history_limit", f"must be in [0, {MAX_HISTORY}]")
        limit = history_limit or DEFAULT_HISTORY

        def read(session: Session) -> ServingSnapshot:
            return ServingSnapshot(
                states=[self.registry.serving_state(session, kind) for kind in KINDS],
                history=self.registry.changes(session, limit),
                revision=self.registry.revision(session),
            )

        return await self.db.run_sync(read)

    async def watch_serving_state(self) -> AsyncIterator[ServingSnapshot]:
        """The serving state now, then again each time it changes. Changes are read from the
        registry's table, so every trainer replica and every restart sees the same ones."""
        last = -1
        while True:
            revision = await self.db.run_sync(self.registry.revision)
            if revision != last:
                snapshot = await self.serving_state(1)
                last = snapshot.revision
                yield snapshot
            await asyncio.sleep(self.settings.serving_watch_poll_s)
