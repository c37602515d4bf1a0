"""Typed settings shared by every service, read from ``CLINALIGN_*`` environment variables.

Each service adds its own settings class (``clinalign.<service>.config``) with the prefix
``CLINALIGN_<SERVICE>_``. Settings are parsed once at start-up and passed down; nothing
reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clinalign.common.quotas import DEFAULT_LIMITS, RoleLimit


class CommonSettings(BaseSettings):
    """Settings every service reads, with the prefix ``CLINALIGN_``."""

    model_config = SettingsConfigDict(env_prefix="CLINALIGN_", extra="ignore")

    data_dir: Path = Field(
        Path(".clinalign"),
        description="Directory for SQLite databases, models, snapshots and local tokens.",
    )
    host: str = Field(
        "127.0.0.1", description="Address the gRPC and metrics servers bind; 0.0.0.0 in pods."
    )
    tokens_file: Path | None = Field(
        None,
        description="JSON file of bearer tokens and their roles; default <data_dir>/tokens.json.",
    )
    service_token: str | None = Field(
        None,
        description="Bearer token this service presents when it calls other services "
        "(role `service`); default: the first `service` token in the tokens file.",
    )
    oidc_issuer: str | None = Field(
        None,
        description="OIDC issuer URL (https; http only on loopback) whose JWT access tokens "
        "people present; unset: JWTs are refused and only static tokens are known.",
    )
    oidc_audience: str | None = Field(
        None, description="The `aud` every accepted JWT must name; required with oidc_issuer."
    )
    oidc_jwks_url: str | None = Field(
        None, description="The issuer's JWKS URL; default: jwks_uri of its discovery document."
    )
    oidc_roles_claim: str = Field(
        "roles",
        min_length=1,
        max_length=128,
        description="Dotted path of the claim holding ClinAlign role names, such as "
        "`realm_access.roles`; a list, or a string of space-separated names.",
    )
    oidc_leeway_s: int = Field(
        30, ge=0, le=300, description="Clock skew allowed on exp, nbf and iat, in seconds."
    )
    delegation_keys_file: Path | None = Field(
        None,
        description='JSON of the front doors\' public keys (`{"cds-hooks": <JWK>}`) that '
        "verify the assertions they sign for people the issuer does not know (EHR users).",
    )
    oidc_ca_file: Path | None = Field(
        None, description="PEM CA bundle for the issuer's HTTPS; default: the system's."
    )
    rate_limits: dict[str, RoleLimit] = Field(
        default_factory=lambda: dict(DEFAULT_LIMITS),
        description="Per-principal limits by role (JSON: role -> {rate_per_s, burst, "
        "concurrent}); over them RESOURCE_EXHAUSTED with a grpc-retry-pushback-ms trailer. "
        "A role without an entry (by default service and admin) is not limited per "
        "principal; a principal with several roles gets the most generous.",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM server certificate; with tls_key_file switches TLS on."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate (mTLS)."
    )
    tls_ca_file: Path | None = Field(
        None, description="PEM CA bundle this service trusts when it calls other services."
    )
    max_message_mb: int = Field(
        64, ge=1, le=1024, description="Largest gRPC message accepted or sent, in MiB."
    )
    keepalive_time_s: int = Field(
        30, ge=1, description="Interval between HTTP/2 keepalive pings on idle connections."
    )
    grace_period_s: float = Field(
        10.0, ge=0, description="Seconds in-flight RPCs get to finish after SIGTERM."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the JSON logs on stderr."
    )
    otel_enabled: bool = Field(False, description="Emit OpenTelemetry traces.")
    otel_exporter: Literal["otlp", "console", "file"] = Field(
        "otlp",
        description="Where spans go: an OTLP/gRPC collector, stderr, or a JSON-lines file.",
    )
    otel_endpoint: str = Field(
        "http://127.0.0.1:4317", description="OTLP/gRPC collector endpoint for `otlp`."
    )
    otel_file: Path | None = Field(
        None, description="File for the `file` exporter; default <data_dir>/traces/<service>.jsonl."
    )
    generation_target: str = Field(
        "127.0.0.1:50051", description="host:port of the generation service."
    )
    reward_target: str = Field("127.0.0.1:50052", description="host:port of the reward service.")
    preference_target: str = Field(
        "127.0.0.1:50053", description="host:port of the preference service."
    )
    trainer_target: str = Field("127.0.0.1:50054", description="host:port of the trainer service.")
    monitor_target: str = Field("127.0.0.1:50055", description="host:port of the monitor service.")

    @field_validator("rate_limits")
    @classmethod
    def _known_roles(cls, value: dict[str, RoleLimit]) -> dict[str, RoleLimit]:
        from clinalign.common.auth import Role

        unknown = sorted(set(value) - {r.value for r in Role})
        if unknown:
            raise ValueError(f"unknown roles {unknown}; roles are {[r.value for r in Role]}")
        return value

    @property
    def resolved_tokens_file(self) -> Path:
        return self.tokens_file or self.data_dir / "tokens.json"

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    def target(self, service: str) -> str:
        """The configured ``host:port`` of a peer service by name."""
        value = getattr(self, f"{service}_target", None)
        if not isinstance(value, str):
            raise KeyError(f"unknown service {service!r}")
        return value


class ServiceSettings(BaseSettings):
    """Fields every service's own settings class has. Subclasses set the env prefix and the
    default ports from the design's port table."""

    model_config = SettingsConfigDict(extra="ignore")

    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 picks a free one."
    )
    max_concurrent_rpcs: int = Field(
        256, ge=1, description="RPCs handled at once; beyond it callers get RESOURCE_EXHAUSTED."
    )


# A generation or reward replica's setting (each service's settings class has the field).
FOLLOW_REGISTRY = Field(
    False,
    description="Serve what the trainer's registry serves: resolve it at start (NOT_SERVING "
    "until it is loaded), then follow WatchServingState; ActivateModel only loads the "
    "registry's versions. `clinalign up` and the deployment manifests turn it on; off, "
    "the replica serves model_path and ActivateModel still refuses what the registry "
    "does not serve.",
)
