"""CDS Hooks gateway settings, with the prefix ``CLINALIGN_CDS_HOOKS_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clinalign.cdshooks.smart import SmartClient
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
    temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="Sampling temperature of each draft; unset, the generation service's "
        "default; 0 greedy.",
    )
    message_context: Literal["record", "message-only"] = Field(
        "record",
        description="What a reply to a patient's message is drafted from: `record` renders "
        "the message with the patient's record (the patient-question template); "
        "`message-only` sends the message alone, for a model trained on questions without a "
        "record (the embedded demo model). The card and its provenance are the same.",
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
        description="Deadline of each read of missing prefetch from the EHR's fhirServer, "
        "all pages of a paged search together; past it the hook gets 504 naming the "
        "prefetch key.",
    )
    fhir_max_bytes: int = Field(
        4 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest answer the fhirServer may give to one prefetch read; larger gets 502.",
    )
    smart_clients: dict[str, SmartClient] = Field(
        default_factory=dict,
        description="SMART Backend Services: the EHRs' FHIR servers the gateway may read "
        "with a token of its own when a hook carries no fhirAuthorization, as JSON "
        '`{"<fhirServer URL>": {"issuer": "<the EHR\'s JWT issuer>", "client_id": "...", '
        '"scope": "system/Patient.rs ...", "token_url": "..."}}`: only hooks from that '
        "issuer (one of trusted_issuers) get the gateway's token for that server; token_url "
        "empty: read from the server's /.well-known/smart-configuration. Register "
        "`<public_url>/.well-known/jwks.json` with each EHR as ClinAlign's JWKS URL.",
    )
    smart_key_file: Path | None = Field(
        None,
        description="The gateway's private JWK (ES384) for SMART Backend Services client "
        "assertions; default <data_dir>/cds-hooks-smart.jwk, made on first start.",
    )
    call_timeout_s: float = Field(
        30.0, gt=0, le=300, description="Deadline of each call to a ClinAlign service."
    )
    model_card_ttl_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="How long a version's model card (the registry's facts, read from the "
        "trainer) is kept before it is read again; its stage and gate decisions may change. "
        "0 reads it for every hook.",
    )
    model_card_timeout_s: float = Field(
        3.0,
        gt=0,
        le=60,
        description="Deadline of the registry read behind a model card; past it a hook's card "
        "carries only the draft's provenance, and the model-card URL answers 503.",
    )
    model_intended_use: str = Field(
        "Drafts clinical text for a clinician to review, correct and sign before it is "
        "used or filed: never for autonomous use, never in place of clinical judgement. "
        "For adult patients, in English, from the patient's record as the EHR sends it.",
        max_length=2000,
        description="What the served models are for, as every model card states it; a "
        "version's manifest key `intended_use` replaces it.",
    )
    model_limitations: list[str] = Field(
        default_factory=lambda: [
            "It can state wrong facts, wrong doses or leave things out, in fluent and "
            "confident prose: check every draft against the record and current guidance.",
            "It sees only what the hook sends or the gateway reads from the EHR (the "
            "prefetch); it knows nothing the record does not hold.",
            "Its knowledge ends with its training data: it does not know later guidance, "
            "drugs or formulary changes.",
            "Its evaluation is the promotion gate's: automated judges on held-out prompts, "
            "not a prospective clinical study.",
            "Not evaluated for children, pregnancy, or languages other than English.",
            "Not cleared or approved by any regulator as a medical device.",
        ],
        description="Known limitations of the served models, as every model card lists "
        "them; a version's manifest key `limitations` adds its own before them.",
    )
