"""Trainer settings, with the prefix ``CLINALIGN_TRAINER_``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clinalign.common.config import ServiceSettings


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLINALIGN_TRAINER_", extra="ignore")

    port: int = Field(50054, ge=0, le=65535, description="gRPC port.")
    metrics_port: int = Field(9104, ge=0, le=65535, description="Prometheus /metrics port.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the jobs and registry store; "
        "default sqlite:///<data_dir>/trainer.db.",
    )
