"""CDS Hooks gateway settings, with the prefix ``CLINALIGN_CDS_HOOKS_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clinalign.common.config import ServiceSettings


class CdsHooksSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLINALIGN_CDS_HOOKS_", extra="ignore")

    port: int = Field(8081, ge=0, le=65535, description="HTTP port of the CDS Hooks service.")
    metrics_port: int = Field(9107, ge=0, le=65535, description="Prometheus /metrics port.")
    public_url: str = Field(
        "",
        max_length=512,
        description="The base URL EHRs call (behind the Ingress), such as "
        "https://cds.example.org; a client JWT's `aud` must be this URL followed by the "
        "path called. Default: the address it listens on.",
    )
    trusted_issuers: dict[str, str] = Field(
        default_factory=dict,
        description='The EHRs trusted to call, as JSON `{"<iss>": "<JWKS URL>"}` (https; '
        "http only on loopback); a client JWT from any other issuer is refused.",
    )
    signing_key_file: Path | None = Field(
        None,
        description="The gateway's private JWK (ES256) that signs its assertions of the EHR "
        "user it acts for; its public half goes in the services' delegation_keys_file as "
        "`cds-hooks`. Default <data_dir>/cds-hooks-signing.jwk, made on first start.",
    )
    jwt_leeway_s: int = Field(
        30, ge=0, le=300, description="Clock skew allowed on a client JWT's exp and iat."
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, le=16 << 20, description="Largest request body; larger gets 413."
    )
    allowed_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Origins of browser-based EHRs allowed by CORS; `*` allows any (calls "
        "carry a bearer JWT, never cookies).",
    )
    max_new_tokens: int = Field(
        256, ge=1, le=4096, description="max_new_tokens of each draft a hook asks for."
    )
    card_ttl_s: int = Field(
        86_400,
        ge=60,
        le=604_800,
        description="How long feedback on a card is accepted after the card was returned.",
    )
    fhir_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Deadline of each read of missing prefetch from the EHR's fhirServer; "
        "past it the hook gets 504 naming the prefetch key.",
    )
    fhir_max_bytes: int = Field(
        4 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest answer the fhirServer may give to one prefetch read; larger gets 502.",
    )
    call_timeout_s: float = Field(
        30.0, gt=0, le=300, description="Deadline of each call to a ClinAlign service."
    )
