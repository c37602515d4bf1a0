"""Trainer settings, with the prefix ``CLINALIGN_TRAINER_``."""

from __future__ import annotations

from typing import Literal

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
    executor: Literal["local", "kubernetes"] = Field(
        "local",
        description="Executor for jobs that name none: `local` (a subprocess per job) or "
        "`kubernetes` (a batch/v1 Job per job; not available yet).",
    )
    max_running_jobs: int = Field(
        1, ge=1, description="Jobs the local executor runs at once; the others wait QUEUED."
    )
    cancel_grace_s: float = Field(
        10.0,
        ge=0,
        description="Seconds a cancelled job's process gets after SIGTERM before SIGKILL.",
    )
    watch_poll_s: float = Field(
        0.25, gt=0, description="Interval at which WatchJob and the executor poll the job store."
    )
