"""Every training hyperparameter is a finite number within a bound before a job is
queued: non-finite values, sizes that would take the GPU pool, huge texts, named."""

from __future__ import annotations

import re

import pytest

from clinalign.common.errors import InvalidArgument
from clinalign.trainer.jobs.specs import parse_fields
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.reward_model.training import RewardHyperparameters


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("learning_rate", "nan", "must be a finite number, got nan"),
        ("learning_rate", "inf", "must be a finite number, got inf"),
        ("learning_rate", "1e300", "must be at most 1,000,000,000 in magnitude, got 1e+300"),
        ("response_length", "100000000", "must be at most 8,192 in magnitude, got 100000000"),
        ("iterations", "99999999999", "must be at most 1,000,000 in magnitude"),
        ("samples_per_prompt", "65", "must be at most 64 in magnitude"),
        ("kl_coef", "-inf", "must be a finite number"),
        ("temperature", "1" * 300, "is over 256 characters"),
    ],
)
def test_out_of_bound_hyperparameters_are_refused_naming_the_key(
    key: str, value: str, message: str
) -> None:
    pattern = rf"^spec\.hyperparameters\[{key}\]: " + re.escape(message)
    with pytest.raises(InvalidArgument, match=pattern):
        parse_fields({key: value}, 0, PPOHyperparameters)


def test_in_bound_hyperparameters_pass() -> None:
    parsed = parse_fields(
        {"response_length": "8192", "learning_rate": "1e-5"}, 3, PPOHyperparameters
    )
    assert parsed["response_length"] == 8192 and parsed["seed"] == 3
    assert parse_fields({"batch_size": "4096"}, 0, RewardHyperparameters)["batch_size"] == 4096
    with pytest.raises(InvalidArgument, match=r"batch_size\]: must be at most 4,096"):
        parse_fields({"batch_size": "4097"}, 0, RewardHyperparameters)
