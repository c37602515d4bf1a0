"""Scoring production outputs: every recorded output gets its reward and, when a cost
model serves, its cost (the probability of harm), each with the version that gave it, so
drift in reward and in cost is visible per policy version (GetStats, the
``clinalign_monitor_cost_*`` gauges and their alert).

A round takes the oldest unscored outputs whose text is still kept and sends them to the
reward service in one Score call with ``include_cost`` (``truncate``: a long output is
scored on its end, as PPO scores it). While no cost model serves it scores rewards only.
The reward service being away is retried in the next round. An output the reward service
refuses (INVALID_ARGUMENT naming it) counts a failed attempt, and after
``score_max_attempts`` it is left unscored: one bad output never blocks the others.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import grpc
import grpc.aio

from clinalign.common.channels import Clients
from clinalign.common.db import Database
from clinalign.monitor import store
from clinalign.reward.v1 import reward_pb2

log = logging.getLogger("clinalign.monitor.scoring")

SCORE_TIMEOUT_S = 60.0
BAD_ITEM = re.compile(r"items\[(\d+)\]")


@dataclass(frozen=True)
class Settings:
    batch: int
    max_attempts: int


class Scoring:
    def __init__(self, db: Database, peers: Clients, settings: Settings) -> None:
        self.db = db
        self.peers = peers
        self.settings = settings

    async def score_due(self) -> int:
        """One round; returns how many outputs it scored."""
        s = self.settings
        due = await self.db.run_sync(lambda x: store.unscored(x, s.batch, s.max_attempts))
        if not due:
            return 0
        items = [reward_pb2.ScoreItem(prompt=p, response=t) for _, p, t in due]
        try:
            reply = await self._score(items)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                # The error names the item it refused (items[i]); only that output is
                # charged, and the others go again next round.
                named = BAD_ITEM.search(err.details() or "")
                ids = [due[int(named.group(1))][0]] if named else [i for i, _, _ in due]
                await self.db.run_write(lambda x: store.count_score_failures(x, ids))
            log.warning(
                "outputs not scored", extra={"fields": {"code": err.code().name, "n": len(due)}}
            )
            return 0
        scores = [
            store.OutputScore(
                output_id=output_id,
                reward=result.score,
                reward_model_version=reply.model_version,
                cost=result.cost if reply.cost_model_version else None,
                cost_model_version=reply.cost_model_version,
            )
            for (output_id, _, _), result in zip(due, reply.results, strict=True)
        ]
        await self.db.run_write(lambda x: store.record_scores(x, scores))
        return len(scores)

    async def _score(self, items: list[reward_pb2.ScoreItem]) -> reward_pb2.ScoreResponse:
        """Reward and cost in one call; reward alone while no cost model serves."""
        request = reward_pb2.ScoreRequest(items=items, truncate=True, include_cost=True)
        try:
            return await self.peers.reward.Score(request, timeout=SCORE_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            details = err.details() or ""
            if err.code() != grpc.StatusCode.FAILED_PRECONDITION or "cost" not in details:
                raise
        request.include_cost = False
        return await self.peers.reward.Score(request, timeout=SCORE_TIMEOUT_S)
