"""The endpoints: each checks its input, makes its calls through ``Backend`` and answers
JSON (the model card also as FHIR JSON or Markdown). Logs name services, cards and
outcomes, never patient data or comments."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from clinalign.cdshooks import metrics, taxonomy
from clinalign.cdshooks.app import gateway_of, service_of
from clinalign.cdshooks.cards import card
from clinalign.cdshooks.catalogue import discovery
from clinalign.cdshooks.errors import BadRequest, NotFound
from clinalign.cdshooks.feedback import check_cards, parse_feedback
from clinalign.cdshooks.hooks import check_hook, hook_call

log = logging.getLogger("clinalign.cdshooks")


async def discover(request: Request) -> Response:
    return JSONResponse(discovery())


async def jwks(request: Request) -> Response:
    """The JWKS the EHRs verify the gateway's SMART Backend Services assertions with."""
    smart = gateway_of(request).fhir.smart
    if smart is None:
        raise NotFound("", "no FHIR server is registered for SMART Backend Services")
    return JSONResponse(smart.jwks(), headers={"Cache-Control": "public, max-age=300"})


async def hook(request: Request) -> Response:
    """Checks everything (service, JWT, body) before the one call that drafts."""
    gateway = gateway_of(request)
    service = service_of(request)
    client = gateway.client(request)
    checked = check_hook(await gateway.body(request), service)
    fetched = await gateway.fhir.missing(checked, client.issuer)
    call = hook_call(checked, fetched)
    completion = await gateway.backend.draft(call, gateway.max_new_tokens)
    p = completion.provenance
    facts = await gateway.model_cards.for_draft(p)  # never fails: the card must go back
    gateway.ledger.issue(p.output_id, service.id, client.issuer, call.user_id, p.model_version)
    metrics.CARDS.labels(service.id, p.model_version).inc()
    log.info("card %s for %s (%s)", p.output_id, service.id, p.model_version)
    return JSONResponse({"cards": [card(call, completion, gateway.public_url, facts)]})


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
        if not gateway.ledger.claim(outcome):  # recorded already, or by a racing retry
            continue
        recorded = False
        try:
            await gateway.backend.outcome(
                outcome.card,
                cardinfo.user_id,
                outcome.outcome,
                outcome.when,
                f"cds-hooks:{service.id}",
            )
            if outcome.outcome == "overridden" and outcome.reason is not None:
                category, severity = taxonomy.flag_of(outcome.reason)
                await gateway.backend.flag(
                    outcome.card,
                    cardinfo.user_id,
                    category,
                    severity,
                    outcome.comment,
                    outcome.correction,
                )
            recorded = True
        finally:
            gateway.ledger.release(outcome, recorded)
        metrics.OUTCOMES.labels(service.id, cardinfo.model_version, outcome.outcome).inc()
        log.info("feedback on card %s: %s (%s)", outcome.card, outcome.outcome, outcome.reason)
    return JSONResponse({})


async def model_card(request: Request) -> Response:
    """The model card of a policy version in the registry, served or not (a retired
    version's URL goes on working): JSON, a FHIR Device or Markdown, by ``?format=`` or
    else the Accept header. 503 while the registry cannot be read."""
    gateway = gateway_of(request)
    form = card_format(request)
    name, version = request.path_params["name"], request.path_params["version"]
    facts = await gateway.model_cards.get(version)
    if facts.kind != "policy":
        raise NotFound("version", f"{version} is a {facts.kind} model; cards are of policies")
    if facts.name != name:
        raise NotFound("name", f"{version} is registered as {facts.name}, not {name}")
    if form == "fhir":
        return JSONResponse(facts.as_device(gateway.public_url), media_type=FHIR_JSON)
    if form == "markdown":
        return Response(facts.as_markdown(), media_type="text/markdown; charset=utf-8")
    return JSONResponse(facts.as_json(gateway.public_url))


FHIR_JSON = "application/fhir+json"
# Media types of the Accept header -> the card's form (``?format=``).
CARD_FORMS = {FHIR_JSON: "fhir", "text/markdown": "markdown", "application/json": "json"}


def card_format(request: Request) -> str:
    """``?format=json|fhir|markdown``; without it, the Accept header's most preferred
    form the card has (by q, then order); else JSON."""
    asked = request.query_params.get("format")
    if asked is not None:
        if asked not in CARD_FORMS.values():
            raise BadRequest("format", "must be json, fhir or markdown")
        return asked
    ranked: list[tuple[float, str]] = []
    for item in request.headers.get("accept", "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = next((p[2:] for p in params if p.startswith("q=")), "1")
        try:
            weight = float(q)
        except ValueError:
            continue
        if weight > 0:  # q=0: not acceptable
            ranked.append((-weight, media.lower()))
    ranked.sort(key=lambda x: x[0])  # stable: equal q keeps the header's order
    return next((CARD_FORMS[m] for _, m in ranked if m in CARD_FORMS), "json")
