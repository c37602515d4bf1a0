"""Small text helpers for filling sentence templates.

Templates use `str.format` fields. A field whose first letter is upper case (`{Name}`)
is filled with the lower-case field's value, capitalised, so templates can start a
sentence with a slot without the data carrying two spellings.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from functools import lru_cache

_FORMATTER = string.Formatter()


class MissingSlotError(KeyError):
    """A template names a slot the caller did not fill (or filled with None)."""


class Slots(dict[str, object]):
    """Template values; `{Key}` resolves to the capitalised value of `{key}`."""

    def __missing__(self, key: str) -> object:
        lower = key[:1].lower() + key[1:]
        if key[:1].isupper() and lower in self:
            value = self[lower]
            if value is None:
                raise MissingSlotError(key)
            return capitalise(str(value))
        raise MissingSlotError(key)


def capitalise(text: str) -> str:
    """Upper-case the first character only ("mRNA" stays as is after the first letter)."""
    return text[:1].upper() + text[1:]


@lru_cache(maxsize=4096)
def fields_of(template: str) -> tuple[str, ...]:
    """Names of the format fields in `template`, in order."""
    return tuple(name for _, name, _, _ in _FORMATTER.parse(template) if name)


def can_fill(template: str, slots: Mapping[str, object]) -> bool:
    """Whether every field of `template` has a non-None value in `slots`."""
    for name in fields_of(template):
        key = name if name in slots else name[:1].lower() + name[1:]
        if slots.get(key) is None:
            return False
    return True


def fill(template: str, slots: Mapping[str, object]) -> str:
    """Fill `template`; raises MissingSlotError when a slot is absent or None."""
    values = Slots(slots)
    for name in fields_of(template):
        if name in values and values[name] is None:
            raise MissingSlotError(name)
    return template.format_map(values)


def pick(rng: random.Random, templates: Sequence[str], slots: Mapping[str, object]) -> str:
    """Fill a random template among those whose slots are all available."""
    usable = [t for t in templates if can_fill(t, slots)]
    if not usable:
        raise MissingSlotError(f"no template fits slots {sorted(slots)}")
    return fill(rng.choice(usable), slots)


def join_list(items: Sequence[str], conjunction: str = "and") -> str:
    """'a', 'a and b', 'a, b and c' (no Oxford comma, matching the corpus style)."""
    if not items:
        raise ValueError("join_list needs at least one item")
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def sample_some(rng: random.Random, items: Sequence[str], low: int, high: int) -> list[str]:
    """Between `low` and `high` distinct items (fewer if there are not enough)."""
    k = min(len(items), rng.randint(low, max(low, high)))
    return rng.sample(list(items), k)
