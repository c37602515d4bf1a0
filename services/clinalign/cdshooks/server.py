"""The gateway process: ``python -m clinalign.cdshooks`` serves the CDS Hooks application
with uvicorn (HTTPS when ``tls_cert_file`` is set, as every service) and /metrics beside it."""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.applications import Starlette

from clinalign.cdshooks.app import Gateway, build_app
from clinalign.cdshooks.backend import Backend
from clinalign.cdshooks.catalogue import SERVICES
from clinalign.cdshooks.clientauth import ClientAuth
from clinalign.cdshooks.config import CdsHooksSettings
from clinalign.cdshooks.feedback import Ledger
from clinalign.cdshooks.fhir import FhirFetcher
from clinalign.cdshooks.modelcard import ModelCards, Usage
from clinalign.cdshooks.smart import BackendServices
from clinalign.common.assertions import AssertionSigner, load_signing_key
from clinalign.common.auth import service_principal
from clinalign.common.channels import Clients
from clinalign.common.config import CommonSettings
from clinalign.common.logs import configure_logging
from clinalign.common.oidc import OidcConfigError
from clinalign.common.web import serve
from clinalign.trainer.v1 import trainer_pb2 as tpb

log = logging.getLogger("clinalign.cdshooks")
SERVICE = "cds-hooks"


def signing_key_path(common: CommonSettings, settings: CdsHooksSettings) -> Path:
    return settings.signing_key_file or common.data_dir / "cds-hooks-signing.jwk"


def smart(common: CommonSettings, settings: CdsHooksSettings) -> BackendServices | None:
    """SMART Backend Services for the FHIR servers registered; None when none is."""
    if not settings.smart_clients:
        return None
    for server, client in settings.smart_clients.items():
        if client.issuer not in settings.trusted_issuers:
            raise ValueError(
                f"smart_clients[{server!r}].issuer {client.issuer!r} is not in trusted_issuers"
            )
    path = settings.smart_key_file or common.data_dir / "cds-hooks-smart.jwk"
    return BackendServices(
        load_signing_key(path, "ES384"),
        settings.smart_clients,
        settings.fhir_timeout_s,
        settings.fhir_max_bytes,
    )


def build(common: CommonSettings, settings: CdsHooksSettings) -> Starlette:
    """The application, its client verification and its channels to the services."""
    signer = AssertionSigner(
        load_signing_key(signing_key_path(common, settings)), service_principal(SERVICE)
    )
    public_url = (settings.public_url or f"http://{common.host}:{settings.port}").rstrip("/")
    backend = Backend(
        Clients(common, service=SERVICE),
        signer,
        settings.call_timeout_s,
        temperature=settings.temperature,
        message_only=settings.message_context == "message-only",
    )
    gateway = Gateway(
        backend=backend,
        auth=ClientAuth(settings.trusted_issuers, settings.jwt_leeway_s),
        ledger=Ledger(settings.card_ttl_s),
        public_url=public_url,
        max_body_bytes=settings.max_body_bytes,
        max_new_tokens=settings.max_new_tokens,
        allowed_origins=settings.allowed_origins,
        fhir=FhirFetcher(
            settings.fhir_timeout_s, settings.fhir_max_bytes, smart=smart(common, settings)
        ),
        model_cards=model_cards(backend, settings),
    )
    return build_app(gateway)


def model_cards(backend: Backend, settings: CdsHooksSettings) -> ModelCards:
    """Model cards read from the registry, with the operator's intended use and
    limitations and the tasks this gateway's CDS services draft."""
    usage = Usage(
        settings.model_intended_use,
        tuple(settings.model_limitations),
        tuple(s.title for s in SERVICES.values()),
    )

    async def fetch(version: str) -> tpb.GetModelVersionResponse:
        return await backend.model_version(version, settings.model_card_timeout_s)

    return ModelCards(fetch, usage, settings.model_card_ttl_s)


def main() -> None:
    configure_logging(SERVICE)
    common = CommonSettings()
    settings = CdsHooksSettings()
    if not settings.trusted_issuers:
        log.warning("no trusted EHR issuers are configured: every hook will be refused")
    errors = (OidcConfigError, OSError, ValueError)
    serve(SERVICE, lambda: build(common, settings), common, settings, log, errors)
