"""Generated and mutated protobuf messages for the RPC fuzz test
(tests/integration/test_fuzz_rpcs.py), from a message's descriptor alone: the empty
message, each field alone at its boundary values (extreme numbers, NaN and infinities,
unknown enum values, huge, unicode and deeply nested strings, long lists), random
messages, and, as raw bytes, random bytes and truncated encodings."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

F = FieldDescriptor
_INT32 = (0, -1, 1, 2**31 - 1, -(2**31))
_INT64 = (0, -1, 2**63 - 1, -(2**63))
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)
_FLOATS = (0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e308, -1e-308)
_STRINGS = (
    "",
    " ",
    "x" * 100_000,
    "\u202eevil\u0000\ufeff\u200d e\u0301 \U0001f600 \u4e2d\u6587 \u0627\u0644\u0639",
    "[" * 5_000 + "]" * 5_000,
    '{"a":' * 2_000 + "1" + "}" * 2_000,
    "../../../../etc/passwd",
    "' OR 1=1; DROP TABLE flags; --",
    "%s%n%x{0}${jndi:ldap://x}",
    "page-token:" + "9" * 400,
    "-1",
    "NaN",
)


def _scalars(field: FieldDescriptor, rng: random.Random) -> tuple[Any, ...]:
    t = field.type
    if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return _INT32
    if t in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return _INT64
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return _UINT32
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return _UINT64
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return _FLOATS
    if t == F.TYPE_BOOL:
        return (True, False)
    if t == F.TYPE_STRING:
        return _STRINGS
    if t == F.TYPE_BYTES:
        return (b"", rng.randbytes(64), b"\x00" * 10_000)
    if t == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return (max(known), 2**31 - 1, -1)
    return ()


def _random_scalar(field: FieldDescriptor, rng: random.Random) -> Any:
    values = _scalars(field, rng)
    if field.type == F.TYPE_STRING and rng.random() < 0.5:
        return "".join(rng.choice("abcXYZ019-_ .:/é") for _ in range(rng.randint(0, 40)))
    if field.type == F.TYPE_ENUM and rng.random() < 0.6:
        return rng.choice([v.number for v in field.enum_type.values])
    return rng.choice(values)


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == F.TYPE_MESSAGE
        and field.message_type is not None
        and field.message_type.GetOptions().map_entry
    )


def _set(msg: Message, field: FieldDescriptor, value: Any) -> None:
    """Sets one field (a repeated field gets ``value`` as its list)."""
    if _is_map(field):
        target = getattr(msg, field.name)
        key_field = field.message_type.fields_by_name["key"]
        val_field = field.message_type.fields_by_name["value"]
        for k, v in value:
            if val_field.type == F.TYPE_MESSAGE:
                target[k].CopyFrom(v)
            else:
                target[k] = v
        del key_field
        return
    if field.is_repeated:
        container = getattr(msg, field.name)
        if field.type == F.TYPE_MESSAGE:
            for item in value:
                container.add().CopyFrom(item)
        else:
            container.extend(value)
        return
    if field.type == F.TYPE_MESSAGE:
        getattr(msg, field.name).CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def random_message(desc: Descriptor, rng: random.Random, depth: int = 0) -> Message:
    msg = message_factory.GetMessageClass(desc)()
    for field in desc.fields:
        if rng.random() < 0.5:
            continue
        try:
            _set(msg, field, _random_value(field, rng, depth))
        except (ValueError, TypeError):
            continue  # a value this field type refuses client-side
    return msg


def _random_value(field: FieldDescriptor, rng: random.Random, depth: int) -> Any:
    if _is_map(field):
        key_field = field.message_type.fields_by_name["key"]
        val_field = field.message_type.fields_by_name["value"]
        return [
            (_random_scalar(key_field, rng), _one(val_field, rng, depth))
            for _ in range(rng.randint(0, 3))
        ]
    if field.is_repeated:
        n = rng.choice((0, 1, 2, 5, 300))
        return [_one(field, rng, depth) for _ in range(n)]
    return _one(field, rng, depth)


def _one(field: FieldDescriptor, rng: random.Random, depth: int) -> Any:
    if field.type == F.TYPE_MESSAGE:
        if depth >= 3:
            return message_factory.GetMessageClass(field.message_type)()
        return random_message(field.message_type, rng, depth + 1)
    return _random_scalar(field, rng)


def variants(desc: Descriptor, rng: random.Random, n_random: int) -> Iterator[Message]:
    """The empty message, each scalar field alone at each boundary value, each repeated
    field long, and ``n_random`` random messages."""
    cls = message_factory.GetMessageClass(desc)
    yield cls()
    for field in desc.fields:
        if field.type == F.TYPE_MESSAGE and not _is_map(field):
            msg = cls()
            try:
                _set(msg, field, _random_value(field, rng, 1))
            except (ValueError, TypeError):
                continue
            yield msg
            continue
        for value in _scalars(field, rng):
            msg = cls()
            try:
                if _is_map(field):
                    continue
                _set(msg, field, [value] * 1_000 if field.is_repeated else value)
            except (ValueError, TypeError):
                continue
            yield msg
    for _ in range(n_random):
        yield random_message(desc, rng)


def raw_variants(desc: Descriptor, rng: random.Random) -> Iterator[bytes]:
    """Bytes that do not decode as the message: random, truncated, and a field number
    with a wrong wire type."""
    yield rng.randbytes(1)
    yield rng.randbytes(257)
    yield b"\xff" * 32
    whole = random_message(desc, rng).SerializeToString()
    if len(whole) > 2:
        yield whole[: len(whole) // 2]
    yield b"\x0a\xff\xff\xff\xff\x0f"  # field 1, length-delimited, a length past the end
