"""The reward service's scoring use case, transport-free: validate the pairs (the error
names the field), pick the serving model (a canary or the stable one) and score them through
its batcher, and, when asked, cost them with the served cost model at the same time. The
servicer converts protobuf to pairs and scores back, and owns only the stream's windowing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from clinalign.common.errors import InvalidArgument
from clinalign.reward.batcher import ActiveModel
from clinalign.reward.config import RewardSettings
from clinalign.reward.scorer import Scored


def check_pairs(pairs: Sequence[tuple[str, str]], settings: RewardSettings) -> None:
    if not pairs:
        raise InvalidArgument("items", "must hold at least one pair")
    if len(pairs) > settings.max_batch:
        raise InvalidArgument(
            "items", f"holds {len(pairs)} pairs; at most {settings.max_batch} per request"
        )
    limit = settings.max_text_chars
    for i, (prompt, response) in enumerate(pairs):
        if not response.strip():
            raise InvalidArgument(f"items[{i}].response", "must not be empty")
        for name, text in (("prompt", prompt), ("response", response)):
            if len(text) > limit:
                raise InvalidArgument(f"items[{i}].{name}", f"longer than {limit} characters")


@dataclass(frozen=True)
class Scores:
    """One score per pair, in order, the reward version that scored them, and, when asked,
    one cost per pair and the cost version that costed them."""

    scored: list[Scored]
    version: str
    costs: list[float] | None = None
    cost_version: str = ""


async def score(
    models: ActiveModel,
    settings: RewardSettings,
    pairs: Sequence[tuple[str, str]],
    truncate: bool,
    costs: ActiveModel | None = None,
) -> Scores:
    """The pairs' scores and, with ``costs`` (the cost-model slot), their costs: both
    models' batchers work at once, and neither answer is given without the other."""
    check_pairs(pairs, settings)
    batcher = models.pick()
    if costs is None:
        return Scores(await batcher.score(list(pairs), truncate), batcher.info.version)
    costing = costs.pick()
    scored, costed = await asyncio.gather(
        batcher.score(list(pairs), truncate), costing.score(list(pairs), truncate)
    )
    return Scores(scored, batcher.info.version, [c.score for c in costed], costing.info.version)
