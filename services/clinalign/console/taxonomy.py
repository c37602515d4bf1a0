"""The clinical error taxonomy and severities as the forms offer them, read from the
contract's enums so a new category appears without a console change."""

from __future__ import annotations

from clinalign.common.v1 import common_pb2


def _label(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).replace("_", " ").capitalize()


CATEGORIES: list[tuple[str, str]] = [
    (v.name, _label(v.name, "ERROR_CATEGORY_"))
    for v in common_pb2.ErrorCategory.DESCRIPTOR.values
    if v.number != 0
]
SEVERITIES: list[tuple[str, str]] = [
    (v.name, _label(v.name, "SEVERITY_"))
    for v in common_pb2.Severity.DESCRIPTOR.values
    if v.number != 0
]
CATEGORY_NAMES = frozenset(n for n, _ in CATEGORIES)
SEVERITY_NAMES = frozenset(n for n, _ in SEVERITIES)


def category(value: str, field: str) -> int:
    from clinalign.common.errors import InvalidArgument

    if value not in CATEGORY_NAMES:
        raise InvalidArgument(field, "must be one of the error categories")
    return int(common_pb2.ErrorCategory.Value(value))


def severity(value: str, field: str) -> int:
    """The common Severity number; the monitor's Severity enum numbers its values alike."""
    from clinalign.common.errors import InvalidArgument

    if value not in SEVERITY_NAMES:
        raise InvalidArgument(field, "must be one of the severities")
    return int(common_pb2.Severity.Value(value))
