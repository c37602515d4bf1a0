"""FHIR R4 JSON read by hand: a JSON object at a known protobuf path whose getters check
each element against the FHIR JSON rules for its type (https://hl7.org/fhir/R4/json.html)
and name the element's full path in any error, e.g.
``input.fhir.bundle_json.entry[3].resource.valueQuantity.value: must be a JSON number``.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

from clinalign.common.errors import InvalidArgument

# FHIR date / dateTime / instant (https://hl7.org/fhir/R4/datatypes.html#primitive), simplified
# to structure; calendar validity is checked by constructing the date.
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_TIME = r"T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})"
_DATETIME = re.compile(rf"(\d{{4}})(?:-(\d{{2}})(?:-(\d{{2}})(?:{_TIME})?)?)?")
_INSTANT = re.compile(rf"(\d{{4}})-(\d{{2}})-(\d{{2}}){_TIME}")


class Node:
    """A JSON object at a known protobuf path; its getters name the path in any error."""

    def __init__(self, data: dict[str, Any], path: str) -> None:
        self.data = data
        self.path = path

    def fail(self, key: str, problem: str) -> InvalidArgument:
        return InvalidArgument(f"{self.path}.{key}", problem)

    def obj(self, key: str) -> Node | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a JSON object, got {kind(value)}")
        return Node(value, f"{self.path}.{key}")

    def need(self, key: str) -> Node:
        node = self.obj(key)
        if node is None:
            raise self.fail(key, "is required")
        return node

    def objs(self, key: str) -> list[Node]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, f"must be a JSON array, got {kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", f"must be a JSON object, got {kind(item)}")
        return [Node(item, f"{self.path}.{key}[{i}]") for i, item in enumerate(value)]

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {kind(value)}")
        # One line: a line break in a value must not start a line of the prompt's own.
        return " ".join(value.split())

    def need_text(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise self.fail(key, "is required")
        return value

    def code(self, key: str, allowed: tuple[str, ...]) -> str | None:
        value = self.text(key)
        if value is not None and value not in allowed:
            raise self.fail(key, f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def number(self, key: str) -> str | None:
        """A JSON number, as written (a decimal keeps its precision: "7.20")."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise self.fail(key, f"must be a JSON number, got {kind(value)}")
        return f"{value:f}" if isinstance(value, Decimal) else str(value)

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {kind(value)}")
        return value

    def date(self, key: str) -> dt.date | None:
        """A FHIR date; a partial one ("1961", "1961-07") reads as its first day."""
        value = self.text(key)
        if value is None:
            return None
        return self._parse(key, value, _DATE, "a FHIR date: YYYY, YYYY-MM or YYYY-MM-DD")

    def datetime(self, key: str) -> str | None:
        """A FHIR dateTime, as its date part at the precision given ("2015-06")."""
        value = self.text(key)
        if value is None:
            return None
        self._parse(key, value, _DATETIME, "a FHIR dateTime such as 2026-02-20T10:15:00Z")
        return value.split("T")[0]

    def instant(self, key: str) -> dt.date | None:
        """A FHIR instant, as its calendar date in its own time zone."""
        value = self.text(key)
        if value is None:
            return None
        return self._parse(key, value, _INSTANT, "a FHIR instant such as 2026-03-01T09:30:00Z")

    def _parse(self, key: str, value: str, pattern: re.Pattern[str], form: str) -> dt.date:
        match = pattern.fullmatch(value)
        try:
            if match is None:
                raise ValueError(value)
            year, month, day = (int(g) if g else 1 for g in match.groups())
            parsed = dt.date(year, month, day)
            if "T" in value:
                dt.datetime.fromisoformat(value)  # hour, minute, second and offset in range
        except ValueError:
            # The value is not echoed: dates identify a patient, and messages travel.
            raise self.fail(key, f"must be {form}") from None
        return parsed


def kind(value: Any) -> str:
    """A JSON value as an error message names it: a short string quoted, else its type."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else "a string"
    names = {bool: "a boolean", int: "a number", Decimal: "a number", list: "an array"}
    return names.get(type(value), "an object" if isinstance(value, dict) else "null")
