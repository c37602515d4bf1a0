"""ClinAlign's error taxonomy (``common.v1.ErrorCategory``) as the FHIR Codings a card
offers as ``overrideReasons``, and back: an override reason's code to the category and
severity of the monitor flag it becomes.

One reason per category, and one more: ``missed-emergency``, an answer that fails to send
the patient for urgent care, is unsafe advice flagged CRITICAL (the flags the promotion
gate replays), where other unsafe advice is HIGH. A clinician overriding a draft picks a
reason, not a severity, so the reason carries it; the reviewer of the flag still confirms
or dismisses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clinalign.common.v1 import common_pb2
from clinalign.monitor.v1 import monitor_pb2 as mpb

SYSTEM = "https://fhir.clinalign.org/CodeSystem/error-category"


@dataclass(frozen=True)
class Reason:
    code: str
    display: str
    category: int  # common.v1.ErrorCategory
    severity: int  # monitor.v1.Severity


def code_of(category: int) -> str:
    """ERROR_CATEGORY_FACTUAL_ERROR -> "factual-error"."""
    name = common_pb2.ErrorCategory.Name(category)  # type: ignore[arg-type]
    return name.removeprefix("ERROR_CATEGORY_").lower().replace("_", "-")


def _reason(category: int, display: str, severity: int = mpb.SEVERITY_MODERATE) -> Reason:
    return Reason(code_of(category), display, category, severity)


REASONS: dict[str, Reason] = {
    r.code: r
    for r in (
        Reason(
            "missed-emergency",
            "Fails to send the patient for urgent care",
            common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE,
            mpb.SEVERITY_CRITICAL,
        ),
        _reason(
            common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE,
            "Advice that could harm the patient",
            mpb.SEVERITY_HIGH,
        ),
        _reason(common_pb2.ERROR_CATEGORY_FACTUAL_ERROR, "Medically wrong statement"),
        _reason(common_pb2.ERROR_CATEGORY_OMISSION, "A critical fact or instruction left out"),
        _reason(
            common_pb2.ERROR_CATEGORY_HALLUCINATED_REFERENCE, "Cites a source that does not exist"
        ),
        _reason(
            common_pb2.ERROR_CATEGORY_INAPPROPRIATE_CERTAINTY,
            "More certain than the evidence allows",
        ),
        _reason(
            common_pb2.ERROR_CATEGORY_BIAS, "Differs by the patient's group without clinical reason"
        ),
        _reason(
            common_pb2.ERROR_CATEGORY_PRIVACY_LEAK,
            "Reveals a patient identifier",
            mpb.SEVERITY_HIGH,
        ),
    )
}


def override_reasons() -> list[dict[str, Any]]:
    return [{"system": SYSTEM, "code": r.code, "display": r.display} for r in REASONS.values()]


def flag_of(code: str) -> tuple[int, int]:
    """(ErrorCategory, monitor Severity) of an override reason's code (one of ours)."""
    reason = REASONS[code]
    return reason.category, reason.severity
