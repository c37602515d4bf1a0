"""Monitor settings, with the prefix ``CLINALIGN_MONITOR_``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clinalign.common.config import ServiceSettings


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLINALIGN_MONITOR_", extra="ignore")

    port: int = Field(50055, ge=0, le=65535, description="gRPC port.")
    metrics_port: int = Field(9105, ge=0, le=65535, description="Prometheus /metrics port.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the outputs and flags store; "
        "default sqlite:///<data_dir>/monitor.db.",
    )
    max_batch: int = Field(
        512, ge=1, le=10_000, description="Most outputs one RecordOutputs call may carry."
    )
