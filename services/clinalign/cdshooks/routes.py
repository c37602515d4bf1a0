"""The endpoints: each checks its input, makes its calls through ``Backend`` and answers
JSON. Logs name services, cards and outcomes, never patient data or comments."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from clinalign.cdshooks import metrics, taxonomy
from clinalign.cdshooks.app import gateway_of, service_of
from clinalign.cdshooks.cards import card
from clinalign.cdshooks.catalogue import discovery
from clinalign.cdshooks.errors import NotFound
from clinalign.cdshooks.feedback import check_cards, parse_feedback
from clinalign.cdshooks.hooks import check_hook, hook_call

log = logging.getLogger("clinalign.cdshooks")


async def discover(request: Request) -> Response:
    return JSONResponse(discovery())


async def hook(request: Request) -> Response:
    """Checks everything (service, JWT, body) before the one call that drafts."""
    gateway = gateway_of(request)
    service = service_of(request)
    client = gateway.client(request)
    checked = check_hook(await gateway.body(request), service)
    fetched = await gateway.fhir.missing(
        checked.prefetch, checked.fhir_server, checked.fhir_token, checked.patient_id
    )
    call = hook_call(checked, fetched)
    completion = await gateway.backend.draft(call, gateway.max_new_tokens)
    p = completion.provenance
    gateway.ledger.issue(p.output_id, service.id, client.issuer, call.user_id, p.model_version)
    metrics.CARDS.labels(service.id, p.model_version).inc()
    log.info("card %s for %s (%s)", p.output_id, service.id, p.model_version)
    return JSONResponse({"cards": [card(call, completion, gateway.public_url)]})


async def feedback(request: Request) -> Response:
    """Every item is checked, and its card found, before any is recorded; an item already
    recorded (same card and outcomeTimestamp) is skipped. Each outcome is recorded in the
    monitor first (idempotent there), then an override's flag filed, so a retry after a
    failed flag records nothing twice."""
    gateway = gateway_of(request)
    service = service_of(request)
    client = gateway.client(request)
    outcomes = parse_feedback(await gateway.body(request))
    issued = check_cards(outcomes, gateway.ledger, service.id, client.issuer)
    for outcome, cardinfo in zip(outcomes, issued, strict=True):
        if gateway.ledger.done(outcome):
            continue
        await gateway.backend.outcome(
            outcome.card, cardinfo.user_id, outcome.outcome, outcome.when, f"cds-hooks:{service.id}"
        )
        if outcome.outcome == "overridden" and outcome.reason is not None:
            category, severity = taxonomy.flag_of(outcome.reason)
            await gateway.backend.flag(
                outcome.card, cardinfo.user_id, category, severity, outcome.comment
            )
        gateway.ledger.mark_done(outcome)
        metrics.OUTCOMES.labels(service.id, cardinfo.model_version, outcome.outcome).inc()
        log.info("feedback on card %s: %s (%s)", outcome.card, outcome.outcome, outcome.reason)
    return JSONResponse({})


async def model_card(request: Request) -> Response:
    """The served model version's registry facts as JSON (the FHIR Device and Markdown
    forms, and the evaluation figures, intended use and limitations, are not built yet)."""
    name, version = request.path_params["name"], request.path_params["version"]
    for served in await gateway_of(request).backend.served():
        m = served.model
        if (m.ref.name, m.ref.version) == (name, version):
            return JSONResponse(
                {
                    "name": name,
                    "version": version,
                    "weightsHash": m.weights_hash,
                    "baseModel": m.base_model,
                    "parentVersion": m.parent_version,
                    "snapshotHash": m.snapshot_hash,
                    "metrics": dict(m.metrics),
                    "trafficFraction": served.traffic_fraction,
                    "notice": "Drafts are AI-generated for clinician review.",
                }
            )
    raise NotFound("version", f"{name} {version} is not served now")
