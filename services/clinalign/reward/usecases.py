"""The reward service's scoring use case, transport-free: validate the pairs (the error
names the field), pick the serving model (a canary or the stable one) and score them through
its batcher. The servicer converts protobuf to pairs and scores back, and owns only the
stream's windowing."""

from __future__ import annotations

from collections.abc import Sequence

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


async def score(
    models: ActiveModel,
    settings: RewardSettings,
    pairs: Sequence[tuple[str, str]],
    truncate: bool,
) -> tuple[list[Scored], str]:
    """(one score per (prompt, response) pair, in order; the version that scored them)."""
    check_pairs(pairs, settings)
    batcher = models.pick()
    return await batcher.score(list(pairs), truncate), batcher.info.version
