"""Feedback (CDS Hooks 2.0, "Feedback") checked item by item, and the ledger of the cards
this gateway returned.

An override may carry, in the item's ``extension`` (the specification's extension
mechanism), ``org.clinalign.correction``: the text the clinician wrote in the draft's place,
which the flag carries as its correction (de-identified by the monitor) so the loop learns
from what the clinician would have said, not only that the draft was wrong.

The ledger remembers, for each card, who it was drafted for (the EHR that called and its
user) so that feedback, which names only the card, is attributed to that user and accepted
only from that EHR; and which (card, outcomeTimestamp) pairs were already handled, so a
retried feedback call does nothing twice. It lives in this process's memory for
``card_ttl_s``: feedback reaching another replica, or arriving after a restart, is refused
as an unknown card. Every outcome is also recorded in the monitor (``RecordOutcome``),
which is idempotent by (card, outcome, outcomeTimestamp) itself and durable; the flag an
override files is not, so the ledger still guards it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clinalign.cdshooks import taxonomy
from clinalign.cdshooks.errors import BadRequest, NotFound

MAX_ITEMS = 100
MAX_COMMENT = 2_000
MAX_CORRECTION = 8_000
CORRECTION = "org.clinalign.correction"
OUTCOMES = ("accepted", "overridden")


@dataclass(frozen=True)
class Outcome:
    card: str
    outcome: str  # "accepted" or "overridden"
    reason: str | None  # one of our override reason codes, for an override that gave one
    comment: str
    timestamp: str
    correction: str = ""  # the clinician's own text, for an override (``CORRECTION``)

    @property
    def when(self) -> datetime:
        """``timestamp`` as an aware datetime (``parse_feedback`` checked it is one)."""
        return _parse_instant(self.timestamp)


@dataclass(frozen=True)
class Issued:
    """A card returned to an EHR."""

    service_id: str
    issuer: str
    user_id: str
    model_version: str
    expires: float


def parse_feedback(body: Any) -> list[Outcome]:
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    items = body.get("feedback")
    if not isinstance(items, list) or not items:
        raise BadRequest("feedback", "must be a non-empty array")
    if len(items) > MAX_ITEMS:
        raise BadRequest("feedback", f"has {len(items)} items; at most {MAX_ITEMS}")
    return [_item(item, f"feedback[{i}]") for i, item in enumerate(items)]


def _item(item: Any, at: str) -> Outcome:
    if not isinstance(item, dict):
        raise BadRequest(at, "must be a JSON object")
    card = item.get("card")
    if not isinstance(card, str) or not 1 <= len(card) <= 128:
        raise BadRequest(f"{at}.card", "must be the uuid of a card this service returned")
    outcome = item.get("outcome")
    if outcome not in OUTCOMES:
        raise BadRequest(f"{at}.outcome", "must be 'accepted' or 'overridden'")
    stamp = item.get("outcomeTimestamp")
    if not isinstance(stamp, str) or not _instant(stamp):
        raise BadRequest(f"{at}.outcomeTimestamp", "must be an ISO 8601 instant with a zone")
    reason, comment = None, ""
    override = item.get("overrideReason")
    if override is not None:
        if outcome != "overridden":
            raise BadRequest(f"{at}.overrideReason", "is only for an 'overridden' outcome")
        reason, comment = _override(override, f"{at}.overrideReason")
    correction = _correction(item.get("extension"), outcome, f"{at}.extension")
    return Outcome(card, str(outcome), reason, comment, stamp, correction)


def _correction(extension: Any, outcome: Any, at: str) -> str:
    if extension is None:
        return ""
    if not isinstance(extension, dict):
        raise BadRequest(at, "must be a JSON object")
    text = extension.get(CORRECTION)
    if text is None:
        return ""
    where = f"{at}.{CORRECTION}"
    if outcome != "overridden":
        raise BadRequest(where, "is only for an 'overridden' outcome")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_CORRECTION:
        raise BadRequest(where, f"must be a non-empty string of at most {MAX_CORRECTION}")
    return text


def _override(value: Any, at: str) -> tuple[str | None, str]:
    if not isinstance(value, dict):
        raise BadRequest(at, "must be a JSON object")
    comment = value.get("userComment", "")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise BadRequest(f"{at}.userComment", f"must be a string of at most {MAX_COMMENT}")
    coding = value.get("reason")
    if coding is None:
        return None, comment
    if not isinstance(coding, dict):
        raise BadRequest(f"{at}.reason", "must be a Coding")
    if coding.get("system") != taxonomy.SYSTEM or coding.get("code") not in taxonomy.REASONS:
        raise BadRequest(f"{at}.reason", "must be one of the card's overrideReasons")
    return str(coding["code"]), comment


def _parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _instant(text: str) -> bool:
    try:
        return _parse_instant(text).tzinfo is not None
    except ValueError:
        return False


class Ledger:
    def __init__(
        self, ttl_s: float, limit: int = 500_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self.clock = clock
        self._cards: dict[str, Issued] = {}
        self._done: dict[tuple[str, str, str], float] = {}
        self._claimed: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def issue(self, card: str, service_id: str, issuer: str, user_id: str, version: str) -> None:
        with self._lock:
            now = self.clock()
            if len(self._cards) >= self.limit:
                self._cards = {k: v for k, v in self._cards.items() if v.expires > now}
                self._done = {k: t for k, t in self._done.items() if t > now}
            self._cards[card] = Issued(service_id, issuer, user_id, version, now + self.ttl_s)

    def card(self, card: str, service_id: str, issuer: str) -> Issued | None:
        """The card, when it is live, of this service and was returned to this EHR."""
        with self._lock:
            found = self._cards.get(card)
        if found is None or found.expires <= self.clock():
            return None
        if found.service_id != service_id or found.issuer != issuer:
            return None
        return found

    def claim(self, outcome: Outcome) -> bool:
        """Whether to record ``outcome`` now: False when it was recorded already or is
        being recorded by a call at this moment (a retry racing the original); True claims
        it, and ``release`` must follow if recording it fails."""
        key = _key(outcome)
        with self._lock:
            if key in self._done or key in self._claimed:
                return False
            self._claimed.add(key)
            return True

    def release(self, outcome: Outcome, recorded: bool) -> None:
        """Ends a claim: recorded (kept ``ttl_s``, so a retry records nothing twice), or
        not (a retry may record it)."""
        key = _key(outcome)
        with self._lock:
            self._claimed.discard(key)
            if recorded:
                self._done[key] = self.clock() + self.ttl_s


def _key(outcome: Outcome) -> tuple[str, str, str]:
    """An outcome's identity: its card, what it was, and when as an instant (``Z`` and
    ``+00:00`` are the same time)."""
    return outcome.card, outcome.outcome, outcome.when.isoformat()


def check_cards(
    outcomes: list[Outcome], ledger: Ledger, service_id: str, issuer: str
) -> list[Issued]:
    """Every item's card, before anything is recorded: one unknown card refuses them all."""
    found = []
    for i, o in enumerate(outcomes):
        issued = ledger.card(o.card, service_id, issuer)
        if issued is None:
            raise NotFound(f"feedback[{i}].card", "is not a card this service returned to you")
        found.append(issued)
    return found
