"""The console process: ``python -m clinalign.console`` serves the web application with
uvicorn (HTTPS when ``tls_cert_file`` is set, as every service) and /metrics beside it."""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.applications import Starlette

from clinalign.common.assertions import AssertionSigner, load_signing_key
from clinalign.common.auth import service_principal
from clinalign.common.channels import Clients
from clinalign.common.config import CommonSettings
from clinalign.common.logs import configure_logging
from clinalign.common.oidc import OidcConfigError, oidc_config
from clinalign.common.web import serve
from clinalign.console.app import Console, build_app
from clinalign.console.backend import Backend
from clinalign.console.config import DEV_USERS, ConsoleSettings
from clinalign.console.sessions import Sessions, load_key
from clinalign.console.signin import OidcClient

log = logging.getLogger("clinalign.console")
# an operator's mistake in the settings: one log line and status 1, not a traceback
STARTUP_ERRORS = (OidcConfigError, OSError, ValueError)


def signing_key_path(common: CommonSettings, settings: ConsoleSettings) -> Path:
    return settings.signing_key_file or common.data_dir / "console-signing.jwk"


def build(common: CommonSettings, settings: ConsoleSettings) -> Starlette:
    """The application, its sessions, its sign-in and its channels to the services."""
    sessions = Sessions(
        load_key(settings.session_key_file or common.data_dir / "console-session.key"),
        settings.idle_timeout_s,
        settings.session_max_s,
    )
    config = oidc_config(common)
    oidc = None
    if config is not None:
        secret = (
            settings.oidc_client_secret_file.read_text().strip()
            if settings.oidc_client_secret_file
            else None
        )
        oidc = OidcClient(config, settings.oidc_client_id, secret, settings.oidc_scopes)
    signer = AssertionSigner(
        load_signing_key(signing_key_path(common, settings)), service_principal("console")
    )
    dev_users = (
        {user: role.value for user, role in DEV_USERS.items()}
        if settings.dev_sign_in and oidc is None
        else {}
    )
    public_url = settings.public_url or f"http://{common.host}:{settings.port}"
    console = Console(
        sessions=sessions,
        backend=Backend(Clients(common, service="console"), signer),
        oidc=oidc,
        dev_users=dev_users,
        public_url=public_url,
        page_size=settings.page_size,
    )
    return build_app(console)


def main() -> None:
    configure_logging("console")
    common = CommonSettings()
    settings = ConsoleSettings()
    serve("console", lambda: build(common, settings), common, settings, log, STARTUP_ERRORS)
