"""De-identification settings, read from ``CLINALIGN_DEID_*`` by the caller at start-up."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from clinalign.common.deid.entities import ENTITY_TYPES, EntityType

MIN_HMAC_KEY_CHARS = 16


class DeidSettings(BaseSettings):
    """How free text is de-identified before ClinAlign stores it."""

    # Errors must not echo their input: it may be (a too-short) hmac_key.
    model_config = SettingsConfigDict(
        env_prefix="CLINALIGN_DEID_", extra="ignore", hide_input_in_errors=True
    )

    mode: Literal["placeholder", "hmac"] = Field(
        "placeholder",
        description="`placeholder` replaces an identifier by its type ([NAME], [DATE]); "
        "`hmac` by a consistent pseudonym ([NAME-3f9a2c]) keyed by hmac_key, so the same "
        "identifier maps to the same pseudonym across texts.",
    )
    hmac_key: SecretStr | None = Field(
        None,
        description=f"Secret key of the HMAC-SHA256 pseudonyms, at least {MIN_HMAC_KEY_CHARS} "
        "characters; required when mode is `hmac`. Changing it changes every pseudonym.",
    )
    pseudonym_length: int = Field(
        6, ge=4, le=64, description="Hex digits of the HMAC kept in a pseudonym."
    )
    score_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Lowest detector confidence that is redacted. Weak signals score "
        "0.55-0.65 (a listed given name alone, an unlabelled long number, a lower-case name "
        "in a casual message); raising the threshold above 0.65 drops them and lowers recall. "
        "A city before a state code that is also a credential ('Bell, MD') scores 0.4.",
    )
    entities: Annotated[list[EntityType], NoDecode] = Field(
        default_factory=lambda: list(ENTITY_TYPES),
        min_length=1,
        description="Identifier types to redact, comma-separated in the environment "
        f"(default all: {','.join(ENTITY_TYPES)}).",
    )

    @field_validator("entities", mode="before")
    @classmethod
    def _split_entities(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().upper() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _key_for_hmac(self) -> Self:
        if self.mode != "hmac":
            return self
        key = self.hmac_key.get_secret_value() if self.hmac_key is not None else ""
        if len(key) < MIN_HMAC_KEY_CHARS:
            raise ValueError(
                f"CLINALIGN_DEID_HMAC_KEY (hmac_key) must be set to at least "
                f"{MIN_HMAC_KEY_CHARS} characters when CLINALIGN_DEID_MODE (mode) is 'hmac'; "
                "generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        return self
