"""Consistent pseudonyms: ``[TYPE-<first hex digits of HMAC-SHA256(key, identifier)>]``.

A keyed HMAC rather than a plain hash, because names, dates and phone numbers are few
enough to hash them all: without the key nobody can test a guess against a pseudonym.
The identifier is normalised first, so that ``(555) 123-4567`` and ``555.123.4567``, or
``SMITH, Jane`` and ``Jane Smith``, get the same pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from presidio_anonymizer.entities import InvalidParamError
from presidio_anonymizer.operators import Operator, OperatorType

# Types whose punctuation and spacing carry no identity.
_DIGIT_TYPES = frozenset({"PHONE", "SSN", "MRN", "ACCOUNT", "LICENSE", "DEVICE", "ZIP", "ID"})
_SPACES = re.compile(r"\s+")
_NOT_ALNUM = re.compile(r"[\W_]+")


def normalise(entity_type: str, value: str) -> str:
    """The form of ``value`` that two spellings of one identifier share."""
    if entity_type in _DIGIT_TYPES:
        value = _NOT_ALNUM.sub("", value)
        if entity_type == "PHONE" and len(value) == 11 and value.startswith("1"):
            value = value[1:]  # +1 country code
        return value.upper()
    if entity_type == "NAME" and "," in value:
        last, _, first = value.partition(",")
        value = f"{first} {last}"
    return _SPACES.sub(" ", value).strip().casefold()


def pseudonym(key: bytes, entity_type: str, value: str, length: int = 6) -> str:
    message = f"{entity_type}\x1f{normalise(entity_type, value)}".encode()
    digest = hmac.new(key, message, hashlib.sha256).hexdigest()
    return f"[{entity_type}-{digest[:length]}]"


class HmacPseudonym(Operator):
    """Presidio anonymizer operator ``clinalign_hmac``; params ``key`` (bytes) and
    ``length`` (hex digits). The engine adds ``entity_type``."""

    NAME = "clinalign_hmac"

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        params = params or {}
        return pseudonym(params["key"], params["entity_type"], text, params.get("length", 6))

    def validate(self, params: dict[str, Any] | None = None) -> None:
        params = params or {}
        if not isinstance(params.get("key"), bytes) or not params["key"]:
            raise InvalidParamError("clinalign_hmac needs a non-empty bytes `key`")

    def operator_name(self) -> str:
        return self.NAME

    def operator_type(self) -> OperatorType:
        return OperatorType.Anonymize
