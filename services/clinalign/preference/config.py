"""Preference-store settings, with the prefix ``CLINALIGN_PREFERENCE_``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clinalign.common.config import ServiceSettings


class PreferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLINALIGN_PREFERENCE_", extra="ignore")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port.")
    metrics_port: int = Field(9103, ge=0, le=65535, description="Prometheus /metrics port.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the store; default sqlite:///<data_dir>/preference.db. "
        "PostgreSQL in production, e.g. postgresql://user@host:5432/clinalign.",
    )
    max_text_chars: int = Field(
        20_000, ge=1, le=1_000_000, description="Longest free-text field accepted, in characters."
    )
    max_batch: int = Field(
        1_000, ge=1, le=100_000, description="Most items one Submit* call may carry."
    )
