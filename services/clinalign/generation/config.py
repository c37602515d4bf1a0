"""Generation settings, with the prefix ``CLINALIGN_GENERATION_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clinalign.common.config import FOLLOW_REGISTRY, ServiceSettings


class GenerationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLINALIGN_GENERATION_", extra="ignore")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port.")
    metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus /metrics port.")
    backend: Literal["local", "remote"] = Field(
        "local",
        description="`local`: transformers (+peft) in this process with dynamic batching; "
        "`remote`: a TGI or OpenAI-compatible (vLLM) server at remote_url.",
    )
    remote_url: str = Field(
        "", description="Base URL of the remote server, e.g. http://tgi:8080 (backend=remote)."
    )
    remote_api: Literal["tgi", "openai"] = Field(
        "tgi",
        description="Remote protocol: `tgi` (text-generation-inference /generate_stream) or "
        "`openai` (an OpenAI-compatible /v1/chat/completions such as vLLM).",
    )
    remote_model: str = Field(
        "", description="Model id sent to an OpenAI-compatible server (remote_api=openai)."
    )
    remote_timeout_s: float = Field(
        120.0, gt=0, description="Per-request timeout toward the remote server, in seconds."
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
    torch_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="PyTorch intra-op threads for the local backend; 0 keeps PyTorch's "
        "default (one per core). Small models on few cores run best with 1.",
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
        64,
        ge=1,
        description="Requests admitted and not finished (running + waiting); beyond it "
        "RESOURCE_EXHAUSTED at once.",
    )
    max_batch_size: int = Field(
        32, ge=1, le=512, description="Sequences decoded together by the local backend."
    )
    monitor_buffer: int = Field(
        100_000,
        ge=1,
        description="Outputs the spool holds toward the monitor (a monitor outage of that many "
        "outputs); beyond it the newest is dropped and counted.",
    )
    monitor_spool_path: Path | None = Field(
        None,
        description="SQLite file of the durable outbox toward the monitor, on a disk local "
        "to this replica (the chart mounts an emptyDir; never a shared volume); default "
        "<data_dir>/spool/generation.db.",
    )
    monitor_batch: int = Field(64, ge=1, description="Outputs sent to the monitor per call.")
    report_to_monitor: bool = Field(True, description="Send every output to the monitor service.")
    follow_registry: bool = FOLLOW_REGISTRY
