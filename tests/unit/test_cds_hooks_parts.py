"""The CDS Hooks gateway's pure parts: markdown escaping of drafts, the override-reason
mapping, the jti replay set and the card ledger's expiry and ownership."""

from __future__ import annotations

import pytest

from clinalign.cdshooks import taxonomy
from clinalign.cdshooks.cards import escape_markdown
from clinalign.cdshooks.clientauth import Replays
from clinalign.cdshooks.errors import NotFound
from clinalign.cdshooks.feedback import Ledger, Outcome, check_cards
from clinalign.common.v1 import common_pb2
from clinalign.monitor.v1 import monitor_pb2 as mpb


def test_a_draft_cannot_inject_links_or_images() -> None:
    assert escape_markdown("![x](https://evil/p?q=1) <b>") == r"\!\[x\]\(https://evil/p?q=1\) \<b\>"
    assert escape_markdown("Take 5 mg daily.") == "Take 5 mg daily."


def test_override_reasons_map_to_flag_category_and_severity() -> None:
    codes = [r["code"] for r in taxonomy.override_reasons()]
    assert codes[:2] == ["factual-error", "unsafe-advice"] and len(codes) == 7
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
    assert not ledger.done(item)
    ledger.mark_done(item)
    assert ledger.done(item)
    now[0] = 61.0
    with pytest.raises(NotFound):
        check_cards([item], ledger, "svc-a", "ehr-1")
