"""Scan a text once for all identifier rules.

:func:`compile_rules` joins every :class:`~clinalign.common.deid.patterns.Rule` into ONE
``re`` alternation, so a text is scanned once instead of once per pattern (Presidio's
``PatternRecognizer`` runs each pattern over the whole text). ``re`` tries the
alternatives one by one at every position, so each rule is guarded by a look-ahead on the
characters it can start with, and the rules are nested under one branch per coarse class
of first character: a position then costs a few checks instead of one per rule. On the
evaluation notes that is about three times faster than the plain alternation, which
``compile_rules(..., dispatch=False)`` still builds for the tests to compare with.

Python's ``re`` rather than the ``regex`` module Presidio uses: it is faster on these
patterns (``bench/deid.py`` history) and none of them needs ``regex`` features.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from clinalign.common.deid.entities import EntityType
from clinalign.common.deid.patterns import Rule

# Coarse classes of a match's first character, with samples to test a rule's ``first``
# against. The classes are disjoint, so nesting never changes which rule wins where.
_CLASSES = (
    ("d", "0-9", "0123456789"),
    ("a", "A-Za-z", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
    ("o", "^0-9A-Za-z", "(+#-"),
)


@dataclass(frozen=True)
class CompiledRules:
    """All rules as one regex; ``by_group`` maps each rule's top-level group name to the
    rule and the prefix of its inner group names."""

    regex: re.Pattern[str]
    by_group: dict[str, tuple[Rule, str]]


def compile_rules(rules: Sequence[Rule], dispatch: bool = True) -> CompiledRules:
    """Join ``rules``, in order of priority, into one regex (see the module docstring)."""
    by_group: dict[str, tuple[Rule, str]] = {}

    def alternative(i: int, rule: Rule, tag: str) -> str:
        prefix = f"r{i}{tag}_"
        # Rename inner groups and back-references so that rules cannot clash.
        body = re.sub(r"\(\?P([<=])(\w+)", rf"(?P\1{prefix}\2", rule.pattern.regex)
        by_group[f"r{i}{tag}"] = (rule, prefix)
        guard = f"(?=[{rule.first}])" if dispatch else ""
        return f"{guard}(?P<r{i}{tag}>{body})"

    if not dispatch:
        return CompiledRules(
            re.compile("|".join(alternative(i, r, "") for i, r in enumerate(rules))), by_group
        )
    first = [re.compile(f"[{r.first}]") for r in rules]
    branches = []
    for tag, chars, samples in _CLASSES:
        alts = [
            alternative(i, r, tag)
            for i, r in enumerate(rules)
            if any(first[i].match(c) for c in samples)
        ]
        if alts:
            branches.append(f"(?=[{chars}])(?:{'|'.join(alts)})")
    return CompiledRules(re.compile("|".join(branches)), by_group)


def find(compiled: CompiledRules, text: str) -> list[tuple[int, int, EntityType, float]]:
    """Every identifier the rules find, as ``(start, end, type, score)``."""
    found: list[tuple[int, int, EntityType, float]] = []
    by_group = compiled.by_group
    for m in compiled.regex.finditer(text):
        # A rule's outer group closes last, so ``lastgroup`` names the rule that matched.
        name = m.lastgroup
        assert name is not None
        rule, prefix = by_group[name]
        if rule.validate is not None:
            value = m.group(prefix + rule.groups[0][0]) if rule.groups[0][0] else m.group()
            if not rule.validate(value):
                continue
        score = rule.pattern.score
        if rule.weak_if is not None and rule.weak_if(m, prefix):
            score = 0.4
        for group, entity in rule.groups:
            start, end = m.span(prefix + group if group else name)
            if start >= 0 and end > start:
                found.append((start, end, entity, score))
    return found
