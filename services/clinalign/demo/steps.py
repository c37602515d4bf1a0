"""What every step of the demonstration shares: the peers, the plan, the simulated panel,
the figures measured so far, and the preference-store calls they all make."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

from clinalign.demo.peers import Echo, Peers
from clinalign.demo.plan import Figures, Plan
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.simulation.panel import SimulatedPanel
from clinalign.trainer.v1 import trainer_pb2

CHUNK = 64  # records per Submit* call


def chunks(items: Sequence[Any], size: int = CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def bounded(coros: Sequence[Any], limit: int = 16) -> list[Any]:
    """Awaits `coros` with at most `limit` running at once; results in their order."""
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


class Steps:
    """The state the steps share; `Pipeline` adds the steps themselves."""

    def __init__(self, peers: Peers, plan: Plan, panel: SimulatedPanel, echo: Echo) -> None:
        self.peers = peers
        self.plan = plan
        self.panel = panel
        self.echo = echo
        self.figures = Figures()
        self._keys = itertools.count(1)
        self._demonstrations: list[tuple[str, str, str]] = []  # prompt id, response id, text
        self._sft_answers: list[tuple[str, str]] = []  # (prompt, answer) the SFT policy gave

    def key(self, what: str) -> str:
        return f"demo-{what}-{next(self._keys):05d}"

    # -- preference store helpers ------------------------------------------------------------

    async def store_prompts(
        self, texts: Sequence[str], source: ppb.PromptSource.ValueType, tags: list[str]
    ) -> list[str]:
        ids: list[str] = []
        for chunk in chunks(texts):
            resp = await self.peers.preference.SubmitPrompts(
                ppb.SubmitPromptsRequest(
                    idempotency_key=self.key("prompts"),
                    prompts=[ppb.PromptInput(text=t, source=source, tags=tags) for t in chunk],
                )
            )
            ids += resp.ids
        return ids

    async def store_responses(self, rows: Sequence[tuple[str, str, str]]) -> list[str]:
        """rows: (prompt id, text, model version; empty for a human demonstration)."""
        ids: list[str] = []
        for chunk in chunks(rows):
            resp = await self.peers.preference.SubmitResponses(
                ppb.SubmitResponsesRequest(
                    idempotency_key=self.key("responses"),
                    responses=[
                        ppb.ResponseInput(prompt_id=p, text=t, model_version=v) for p, t, v in chunk
                    ],
                )
            )
            ids += resp.ids
        return ids

    async def snapshot(self, sources: Sequence[ppb.PromptSource.ValueType]) -> ppb.Snapshot:
        return (
            await self.peers.preference.CreateSnapshot(
                ppb.CreateSnapshotRequest(
                    filter=ppb.SnapshotFilter(
                        sources=list(sources),
                        tie_handling=ppb.TIE_HANDLING_DROP,
                        # every annotator's label (see the monitor's cut_snapshot)
                        deduplicate=False,
                        eval_fraction=self.plan.eval_fraction,
                    )
                )
            )
        ).snapshot

    def _record_cost_model(self, label: str, job: trainer_pb2.Job) -> dict[str, float]:
        """A cost-model job's version and held-out figures, in the figures; returns them."""
        self._record_job(label, job)
        self.figures.versions[label] = job.model_version
        figures = {k: v for k, v in job.metrics.items() if k.startswith(("eval_", "train_h"))}
        self.figures.cost_model[job.model_version] = figures
        return figures

    def _record_job(self, label: str, job: trainer_pb2.Job) -> None:
        wall = job.end_time.ToSeconds() - job.start_time.ToSeconds() if job.start_time else 0
        self.figures.jobs.append(
            {
                "label": label,
                "id": job.id,
                "kind": trainer_pb2.JobKind.Name(job.spec.kind),
                "model_version": job.model_version,
                "wall_s": wall,
                "report": job.report_uri,
            }
        )
