"""The CDS Hooks gateway's pure parts: markdown escaping of drafts, the override-reason
mapping, the jti replay set, the card ledger's expiry and ownership, and the model card's
renderings, cache and content negotiation."""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request

from clinalign.cdshooks import taxonomy
from clinalign.cdshooks.cards import escape_markdown
from clinalign.cdshooks.clientauth import Replays
from clinalign.cdshooks.errors import BadRequest, GatewayError, NotFound, Upstream
from clinalign.cdshooks.feedback import Ledger, Outcome, check_cards
from clinalign.cdshooks.modelcard import ModelCard, ModelCards, Usage, training_method
from clinalign.cdshooks.routes import card_format
from clinalign.common.v1 import common_pb2
from clinalign.monitor.v1 import monitor_pb2 as mpb
from clinalign.trainer.v1 import trainer_pb2 as tpb


def test_a_draft_cannot_inject_links_or_images() -> None:
    assert escape_markdown("![x](https://evil/p?q=1) <b>") == r"\!\[x\]\(https://evil/p?q=1\) \<b\>"
    assert escape_markdown("Take 5 mg daily.") == "Take 5 mg daily."


def test_override_reasons_map_to_flag_category_and_severity() -> None:
    codes = [r["code"] for r in taxonomy.override_reasons()]
    assert codes[:3] == ["missed-emergency", "unsafe-advice", "factual-error"]
    assert len(codes) == 8
    assert taxonomy.flag_of("unsafe-advice") == (
        common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE,
        mpb.SEVERITY_HIGH,
    )
    assert taxonomy.flag_of("omission") == (
        common_pb2.ERROR_CATEGORY_OMISSION,
        mpb.SEVERITY_MODERATE,
    )


def test_a_jti_is_refused_while_its_token_lives_and_forgotten_after() -> None:
    now = [1000.0]
    replays = Replays(limit=2, clock=lambda: now[0])
    assert replays.first_use("ehr", "a", until=1100)
    assert not replays.first_use("ehr", "a", until=1100)
    assert replays.first_use("other-ehr", "a", until=1100)  # per issuer
    now[0] = 1200.0
    assert replays.first_use("ehr", "a", until=1300)  # expired entries were pruned


def test_feedback_finds_only_live_cards_of_the_same_service_and_ehr() -> None:
    now = [0.0]
    ledger = Ledger(ttl_s=60, clock=lambda: now[0])
    ledger.issue("out-1", "svc-a", "ehr-1", "Practitioner/1", "v1")
    item = Outcome("out-1", "accepted", None, "", "2026-03-01T10:00:00Z")
    (found,) = check_cards([item], ledger, "svc-a", "ehr-1")
    assert found.user_id == "Practitioner/1"
    for service, issuer in (("svc-b", "ehr-1"), ("svc-a", "ehr-2")):
        with pytest.raises(NotFound, match="not a card this service returned"):
            check_cards([item], ledger, service, issuer)
    # one claim at a time: a retry racing the original records nothing; a failed attempt
    # may be retried; a recorded one is not recorded again, however its time is written
    assert ledger.claim(item) and not ledger.claim(item)
    ledger.release(item, recorded=False)
    assert ledger.claim(item)
    ledger.release(item, recorded=True)
    same_instant = Outcome("out-1", "accepted", None, "", "2026-03-01T10:00:00+00:00")
    assert not ledger.claim(item) and not ledger.claim(same_instant)
    overridden = Outcome("out-1", "overridden", "omission", "", "2026-03-01T10:00:00Z")
    assert ledger.claim(overridden)  # another outcome of the card, at the same time
    now[0] = 61.0
    with pytest.raises(NotFound):
        check_cards([item], ledger, "svc-a", "ehr-1")


# -- the model card (clinalign.cdshooks.modelcard)

EVIL = "![x](https://evil/p) <img src=x> | cell |\n# Heading\n[link](javascript:alert(1))"
USAGE = Usage("Drafts for clinician review.", ("Can be wrong.",), ("Clinician summary",))


def _registry_reply(**manifest: object) -> tpb.GetModelVersionResponse:
    """A registry entry as GetModelVersion answers it, with a refused and then a passed gate
    decision whose checks and manifest carry ``EVIL``."""
    checks = [
        tpb.GateCheck(name="safety:dose_safety", value=-0.01, threshold=-0.05, passed=True,
                      message=EVIL),
        tpb.GateCheck(name="win_rate_vs_served", value=0.6, threshold=0.5, passed=True),
    ]  # fmt: skip
    return tpb.GetModelVersionResponse(
        version=common_pb2.ModelVersion(
            ref=common_pb2.ModelRef(name="clinalign-policy", version="policy-v3"),
            kind=common_pb2.MODEL_KIND_POLICY,
            stage=common_pb2.MODEL_STAGE_CANARY,
            weights_hash="ab" * 32,
            parent_version="policy-v2",
            snapshot_hash="cd" * 32,
            metrics={"reward_mean": 0.25, "kl": math.nan},
        ),
        manifest_json=json.dumps(manifest),
        decisions=[
            tpb.GateDecision(promoted=False, checks=checks[:1]),
            tpb.GateDecision(promoted=True, checks=checks, principal="ml-1"),
        ],
    )


def test_a_registry_string_cannot_inject_markdown_into_the_model_card() -> None:
    card = ModelCard.from_registry(
        _registry_reply(intended_use=EVIL, limitations=[EVIL], method={"algorithm": EVIL}),
        USAGE,
    )
    text = card.as_markdown()
    for raw in ("![", "](", "\n# Heading", "[link]"):
        assert raw not in text, raw
    assert re.search(r"(?<!\\)<img", text) is None  # only as \<img, which shows as text
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == [
        "# Model card: clinalign-policy policy-v3",
        "## Model",
        "## Training",
        "## Evaluation",
        "## Intended use",
        "## Limitations",
    ]
    # One row per check, each with its five cells (the message's | escaped).
    rows = [line for line in text.splitlines() if line.startswith("| safety:")]
    assert len(rows) == 1 and len(re.findall(r"(?<!\\)\|", rows[0])) == 6
    assert rows[0].startswith("| safety:dose\\_safety | -0.01 | -0.05 | yes | \\!\\[x\\]")
    assert "- \\!\\[x\\]" in text and "- Can be wrong." in text  # the manifest's, then ours


def test_the_model_card_reports_the_decision_that_promoted_it_and_only_finite_figures() -> None:
    card = ModelCard.from_registry(_registry_reply(), USAGE)
    assert card.evaluation is not None and card.evaluation.promoted
    assert [c.name for c in card.evaluation.checks] == ["safety:dose_safety", "win_rate_vs_served"]
    facts = card.as_json("https://cds.example.org")
    assert facts["metrics"] == {"kl": None, "reward_mean": 0.25}
    assert facts["url"] == "https://cds.example.org/model-cards/clinalign-policy/policy-v3"
    assert "ml-1" not in json.dumps(facts)
    device = card.as_device("https://cds.example.org")
    assert device["status"] == "active"  # a canary drafts
    codes = [p["type"]["coding"][0]["code"] for p in device["property"]]
    assert codes == ["training-snapshot-sha256", "parent-version", "safety:dose_safety",
                     "win_rate_vs_served", "reward_mean"]  # fmt: skip
    assert "| kl | n/a |" in card.as_markdown()
    retired = _registry_reply()
    retired.version.stage = common_pb2.MODEL_STAGE_RETIRED
    assert ModelCard.from_registry(retired, USAGE).as_device("")["status"] == "inactive"


@pytest.mark.parametrize(
    ("manifest", "method"),
    [
        ({"method": {"algorithm": "rloo-lagrangian", "policy_loss": "ppo_clip"}},
         "rloo-lagrangian: ppo_clip"),
        ({"method": {"name": "dpo", "loss": "sigmoid DPO"}}, "dpo: sigmoid DPO"),
        ({"kind": "foundation", "preset": "tiny"},
         "pretrained from scratch by clinalign bootstrap (preset tiny)"),
        ({"imported_from": {"format": "gguf"}, "name": "SmolLM2"}, "imported (gguf): SmolLM2"),
        ({}, ""),
    ],
)  # fmt: skip
def test_the_training_method_from_each_kind_of_manifest(
    manifest: dict[str, object], method: str
) -> None:
    assert training_method(manifest) == method


async def test_cards_are_kept_a_while_and_a_registry_outage_gives_the_draft_s_own() -> None:
    now, calls = [0.0], []
    reply: list[tpb.GetModelVersionResponse | GatewayError] = [_registry_reply()]

    async def fetch(version: str) -> tpb.GetModelVersionResponse:
        calls.append(version)
        if isinstance(reply[0], GatewayError):
            raise reply[0]
        return reply[0]

    cards = ModelCards(fetch, USAGE, ttl_s=60, clock=lambda: now[0])
    draft = common_pb2.Provenance(
        model_name="clinalign-policy", model_version="policy-v3", weights_hash="ab" * 32
    )
    assert (await cards.for_draft(draft)).available
    assert (await cards.get("policy-v3")).version == "policy-v3" and len(calls) == 1
    reply[0], now[0] = Upstream("", "trainer down"), 61.0
    before = {r: degraded_cards(r) for r in ("unavailable", "weights_mismatch")}
    degraded = await cards.for_draft(draft)
    assert degraded_cards("unavailable") == before["unavailable"] + 1  # counted for operators
    assert not degraded.available and degraded.weights_hash == "ab" * 32
    assert "could not be read" in degraded.as_device("")["note"][0]["text"]
    with pytest.raises(Upstream):  # the failure is kept a few seconds: no second call
        await cards.get("policy-v3")
    assert len(calls) == 2
    reply[0], now[0] = _registry_reply(), 67.0
    other_weights = common_pb2.Provenance(model_version="policy-v3", weights_hash="ef" * 32)
    assert "not the registry's weights" in (await cards.for_draft(other_weights)).caveat
    assert degraded_cards("weights_mismatch") == before["weights_mismatch"] + 1


def degraded_cards(reason: str) -> float:
    found = REGISTRY.get_sample_value(
        "clinalign_cds_hooks_cards_without_registry_facts_total", {"reason": reason}
    )
    return found or 0.0


def _accept(header: str, query: bytes = b"") -> str:
    scope = {"type": "http", "query_string": query, "headers": [(b"accept", header.encode())]}
    return card_format(Request(scope))


def test_the_model_card_form_from_the_query_or_the_accept_header() -> None:
    assert _accept("") == "json"
    assert _accept("application/fhir+json") == "fhir"
    assert _accept("text/html, text/markdown;q=0.9, application/json;q=0.8") == "markdown"
    assert _accept("application/fhir+json;q=0, application/json") == "json"
    assert _accept("text/markdown", b"format=fhir") == "fhir"
    with pytest.raises(BadRequest) as info:
        _accept("", b"format=xml")
    assert info.value.field == "format"


async def test_a_slow_registry_read_holds_up_only_its_own_version() -> None:
    release = asyncio.Event()
    calls: list[str] = []

    async def fetch(version: str) -> tpb.GetModelVersionResponse:
        calls.append(version)
        if version == "policy-v9":  # an unknown version asked at the public URL, slowly
            await release.wait()
            raise NotFound("version", "no such version")
        return _registry_reply()

    cards = ModelCards(fetch, USAGE, ttl_s=60)
    slow = asyncio.ensure_future(cards.get("policy-v9"))
    await asyncio.sleep(0)
    shared = await asyncio.gather(cards.get("policy-v3"), cards.get("policy-v3"))
    assert [c.version for c in shared] == ["policy-v3", "policy-v3"] and not slow.done()
    assert calls.count("policy-v3") == 1  # concurrent asks for one version share a read
    release.set()
    with pytest.raises(NotFound):
        await slow
    assert not cards._locks  # nothing kept per version once nobody asks
