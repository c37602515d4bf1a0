"""ClinAlign's error taxonomy (``common.v1.ErrorCategory``) as the FHIR Codings a card
offers as ``overrideReasons``, and back: an override reason's code to the category and
severity of the monitor flag it becomes."""

from __future__ import annotations

from typing import Any

from clinalign.common.v1 import common_pb2
from clinalign.monitor.v1 import monitor_pb2 as mpb

SYSTEM = "https://fhir.clinalign.org/CodeSystem/error-category"
DISPLAY: dict[int, str] = {
    common_pb2.ERROR_CATEGORY_FACTUAL_ERROR: "Medically wrong statement",
    common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE: "Advice that could harm the patient",
    common_pb2.ERROR_CATEGORY_OMISSION: "A critical fact or instruction left out",
    common_pb2.ERROR_CATEGORY_HALLUCINATED_REFERENCE: "Cites a source that does not exist",
    common_pb2.ERROR_CATEGORY_INAPPROPRIATE_CERTAINTY: "More certain than the evidence allows",
    common_pb2.ERROR_CATEGORY_BIAS: "Differs by the patient's group without clinical reason",
    common_pb2.ERROR_CATEGORY_PRIVACY_LEAK: "Reveals a patient identifier",
}
# Reasons that say the draft could harm if followed are flagged HIGH; the others MODERATE.
SEVERITY: dict[int, int] = {
    common_pb2.ERROR_CATEGORY_UNSAFE_ADVICE: mpb.SEVERITY_HIGH,
    common_pb2.ERROR_CATEGORY_PRIVACY_LEAK: mpb.SEVERITY_HIGH,
}
DEFAULT_SEVERITY = mpb.SEVERITY_MODERATE


def code_of(category: int) -> str:
    """ERROR_CATEGORY_FACTUAL_ERROR -> "factual-error"."""
    name = common_pb2.ErrorCategory.Name(category)  # type: ignore[arg-type]
    return name.removeprefix("ERROR_CATEGORY_").lower().replace("_", "-")


CATEGORY_OF: dict[str, int] = {code_of(c): c for c in DISPLAY}


def override_reasons() -> list[dict[str, Any]]:
    return [{"system": SYSTEM, "code": code_of(c), "display": d} for c, d in DISPLAY.items()]


def flag_of(code: str) -> tuple[int, int]:
    """(ErrorCategory, monitor Severity) of an override reason's code (one of ours)."""
    category = CATEGORY_OF[code]
    return category, SEVERITY.get(category, DEFAULT_SEVERITY)
