"""Generation settings, with the prefix ``CLINALIGN_GENERATION_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clinalign.common.config import ServiceSettings


class GenerationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLINALIGN_GENERATION_", extra="ignore")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port.")
    metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus /metrics port.")
    backend: Literal["local"] = Field(
        "local", description="`local`: transformers in this process (remote TGI/vLLM: issue 4)."
    )
    model_path: Path | None = Field(
        None,
        description="Hugging Face causal-LM directory to serve; default "
        "<data_dir>/models/foundation (built by `clinalign bootstrap`).",
    )
    model_name: str = Field("clinalign-policy", description="Registry name reported in provenance.")
    model_version: str = Field(
        "foundation", description="Version label reported in provenance for model_path."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the local backend runs; auto picks CUDA when present."
    )
    default_max_new_tokens: int = Field(
        128, ge=1, le=4096, description="max_new_tokens when a request leaves it unset."
    )
    max_new_tokens_limit: int = Field(
        512, ge=1, le=8192, description="Largest max_new_tokens a request may ask for."
    )
    max_prompt_chars: int = Field(
        16_000, ge=1, description="Longest prompt accepted, in characters, before tokenising."
    )
    max_queue: int = Field(
        64, ge=1, description="Requests waiting for the model; beyond it RESOURCE_EXHAUSTED."
    )
    monitor_buffer: int = Field(
        4096, ge=1, description="Outputs buffered toward the monitor; overflow is dropped, counted."
    )
    monitor_batch: int = Field(64, ge=1, description="Outputs sent to the monitor per call.")
    report_to_monitor: bool = Field(True, description="Send every output to the monitor service.")
