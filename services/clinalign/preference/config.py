"""Preference-store settings, with the prefix ``CLINALIGN_PREFERENCE_``."""

from __future__ import annotations

from pathlib import Path

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
    audit_keys_file: Path | None = Field(
        None,
        description="JSON file of the audit chain's HMAC keys (`current` and `keys`), from a "
        "Secret; default <data_dir>/audit-keys.json, written with a fresh key if absent.",
    )
    audit_anchor_file: Path | None = Field(
        None,
        description="JSON-lines file the signed checkpoints of the audit chain's head are "
        "appended to, outside the database; unset: <data_dir>/audit-anchors.jsonl, or the "
        "log stream when audit_anchor_to_log is set.",
    )
    audit_anchor_to_log: bool = Field(
        False, description="Write the checkpoints to the log stream instead of a file."
    )
    audit_anchor_interval_s: float = Field(
        60.0, gt=0, le=86_400, description="Seconds between checkpoints of the audit chain."
    )
