"""The reward service's scoring use case checks its pairs before any model sees them."""

from __future__ import annotations

import pytest

from clinalign.common.errors import InvalidArgument
from clinalign.reward.config import RewardSettings
from clinalign.reward.usecases import check_pairs

SETTINGS = RewardSettings(max_batch=2, max_text_chars=10)


@pytest.mark.parametrize(
    ("pairs", "field", "message"),
    [
        ([], "items", "must hold at least one pair"),
        ([("q", "a")] * 3, "items", "holds 3 pairs; at most 2 per request"),
        ([("q", "a"), ("q", "  ")], "items[1].response", "must not be empty"),
        ([("q" * 11, "a")], "items[0].prompt", "longer than 10 characters"),
        ([("q", "a" * 11)], "items[0].response", "longer than 10 characters"),
    ],
)
def test_bad_pairs_are_refused_naming_the_field(
    pairs: list[tuple[str, str]], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        check_pairs(pairs, SETTINGS)
    assert info.value.field == field


def test_good_pairs_pass() -> None:
    check_pairs([("q", "a"), ("", "an answer")], SETTINGS)
