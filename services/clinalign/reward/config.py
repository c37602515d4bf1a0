"""Reward settings, with the prefix ``CLINALIGN_REWARD_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clinalign.common.config import ServiceSettings


class RewardSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLINALIGN_REWARD_", extra="ignore")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port.")
    metrics_port: int = Field(9102, ge=0, le=65535, description="Prometheus /metrics port.")
    model_path: Path | None = Field(
        None,
        description="Sequence-classification reward-model directory to serve at start; "
        "unset: the service runs NOT_SERVING until a model is activated.",
    )
    model_version: str = Field("", description="Version label reported for model_path.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where scoring runs.")
    max_batch: int = Field(256, ge=1, le=4096, description="Most pairs one Score call may carry.")
    max_text_chars: int = Field(
        32_000, ge=1, description="Longest prompt or response accepted, in characters."
    )
