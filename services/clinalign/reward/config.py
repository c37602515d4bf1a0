"""Reward settings, with the prefix ``CLINALIGN_REWARD_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from clinalign.common.config import FOLLOW_REGISTRY, ServiceSettings


class RewardSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLINALIGN_REWARD_", extra="ignore")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port.")
    metrics_port: int = Field(9102, ge=0, le=65535, description="Prometheus /metrics port.")
    follow_registry: bool = FOLLOW_REGISTRY
    model_path: Path | None = Field(
        None,
        description="Sequence-classification reward-model directory to serve at start; "
        "unset: the service runs NOT_SERVING until a model is activated.",
    )
    model_version: str = Field(
        "", description="Version label reported for model_path; default its directory name."
    )
    cost_model_path: Path | None = Field(
        None,
        description="Cost-model directory (a cost_model job's output) to serve beside the "
        "reward model at start; unset: none until a cost version is activated. Score calls "
        "with include_cost need one.",
    )
    cost_model_version: str = Field(
        "", description="Version label reported for cost_model_path; default its directory name."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where scoring runs.")
    torch_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="PyTorch intra-op threads for scoring; 0 keeps PyTorch's default (one "
        "per core).",
    )
    max_batch: int = Field(
        256,
        ge=1,
        le=4096,
        description="Most pairs one Score call or ScoreStream message may carry.",
    )
    max_text_chars: int = Field(
        32_000, ge=1, description="Longest prompt or response accepted, in characters."
    )
    max_batch_pairs: int = Field(
        64,
        ge=1,
        le=4096,
        description="Most queued pairs the scorer takes at a time, from any number of "
        "callers; it sorts them by length and scores them in forward passes of at most "
        "this many rows and max_batch_tokens tokens.",
    )
    max_batch_tokens: int = Field(
        1024,
        ge=1,
        description="Most padded tokens (rows x longest row) in one forward pass; one pair "
        "always fits. About a thousand was fastest on CPU, where larger passes ran slower per "
        "token (bench/README.md); raise it on a GPU.",
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long an idle scorer waits for more callers before taking fewer "
        "than max_batch_pairs pairs, in milliseconds; 0 scores what is queued at once.",
    )
    max_queue_pairs: int = Field(
        2048,
        ge=1,
        description="Pairs accepted and not yet answered, over all callers; beyond it "
        "RESOURCE_EXHAUSTED at once. At least max_batch.",
    )

    @model_validator(mode="after")
    def _queue_holds_a_call(self) -> Self:
        if self.max_queue_pairs < self.max_batch:
            raise ValueError(
                f"max_queue_pairs ({self.max_queue_pairs}) must be at least max_batch "
                f"({self.max_batch}), or a full call could never be accepted"
            )
        return self
