"""Console settings, with the prefix ``CLINALIGN_CONSOLE_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clinalign.common.auth import Role
from clinalign.common.config import ServiceSettings

# The embedded default's demo clinicians (`clinalign up` registers them as annotators):
# the development-only sign-in offers these, never when an issuer is configured.
DEV_USERS: dict[str, Role] = {
    "u-dr-okafor": Role.CLINICIAN,
    "u-dr-lindqvist": Role.CLINICIAN,
    "u-dr-haddad": Role.CLINICAL_LEAD,
}


class ConsoleSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLINALIGN_CONSOLE_", extra="ignore")

    port: int = Field(8080, ge=0, le=65535, description="HTTP port of the web console.")
    metrics_port: int = Field(9106, ge=0, le=65535, description="Prometheus /metrics port.")
    public_url: str = Field(
        "",
        max_length=512,
        description="The URL clinicians reach the console at (behind the Ingress), such as "
        "https://console.example.org; the OIDC redirect URI is <public_url>/auth/callback. "
        "Default: the address it listens on.",
    )
    oidc_client_id: str = Field(
        "clinalign-console",
        min_length=1,
        max_length=255,
        description="The console's client id at the OIDC issuer (common oidc_issuer): "
        "authorization-code flow with PKCE.",
    )
    oidc_client_secret_file: Path | None = Field(
        None,
        description="File holding the client secret, for an issuer that registers the "
        "console as a confidential client; unset: a public client (PKCE alone).",
    )
    oidc_scopes: str = Field(
        "openid profile", max_length=512, description="Scopes the console asks for."
    )
    session_key_file: Path | None = Field(
        None,
        description="File of the key that encrypts and signs session cookies (Fernet, made "
        "on first start when absent); default <data_dir>/console-session.key. Every replica "
        "must share it.",
    )
    signing_key_file: Path | None = Field(
        None,
        description="The console's private JWK (ES256) that signs assertions for people it "
        "signed in without an issuer (the development sign-in); its public half goes in the "
        "services' delegation_keys_file. Default <data_dir>/console-signing.jwk, made on "
        "first start when absent.",
    )
    dev_sign_in: bool = Field(
        True,
        description="Offer the development-only sign-in as the demo clinicians; refused "
        "whenever oidc_issuer is set.",
    )
    idle_timeout_s: int = Field(
        900, ge=60, le=86_400, description="A session unused this long is signed out."
    )
    session_max_s: int = Field(
        43_200, ge=300, le=604_800, description="A session ends this long after sign-in."
    )
    page_size: int = Field(20, ge=1, le=100, description="Rows per page of outputs and flags.")
