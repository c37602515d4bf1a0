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
    max_text_chars: int = Field(
        20_000,
        ge=1,
        description="Most characters of a recorded prompt or output, or of a flag's "
        "corrected text.",
    )
    max_comment_chars: int = Field(
        2_000, ge=1, description="Most characters of a flag's comment or resolution reason."
    )
    baseline_outputs: int = Field(
        200,
        ge=2,
        description="A version's first this many outputs (by generation time) form its drift "
        "baseline: the reference reward-score distribution and flag rate.",
    )
    psi_bins: int = Field(
        10,
        ge=2,
        le=100,
        description="Equal-frequency bins of the baseline's reward scores for the population "
        "stability index.",
    )
    drift_window_minutes: float = Field(
        60.0,
        gt=0,
        description="Trailing window of the drift and flag-rate gauges on /metrics.",
    )
    stats_interval_s: float = Field(
        60.0, gt=0, description="Seconds between refreshes of the drift and flag-rate gauges."
    )
    retention_days: float = Field(
        90.0,
        ge=0,
        description="Outputs generated longer ago than this are deleted with their text and "
        "flags (a baseline output keeps its figures, not its text); 0 keeps them forever.",
    )
    retention_interval_s: float = Field(
        3600.0, gt=0, description="Seconds between retention sweeps."
    )
