"""The formulary the rule checks consult: medicines, their limits with units, cautions and
allergy groups, each with its source, loaded once from ``data/formulary.json``.

The file is generated (``python -m clinalign.foundation.formulary``) from the corpus's
synthetic medicines table and checked against its generator by a test; nothing here reads
the foundation or simulation packages. A medicine is found in text by its name or one of
its other names ("salbutamol" for "salbutamol inhaler"), longest first, so "ibuprofen 5%
gel" is never read as "ibuprofen". Its ingredient, where that is not a name of any entry
("aspirin" for "low-dose aspirin"), is found too but marked inexact: it matters for an
allergy, not for the entry's dose limits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any

from .quantities import format_amount

DATA_FILE = "formulary.json"
PERIODS = ("dose", "24 hours", "course")  # what a limit's amount is counted over


@dataclass(frozen=True)
class Limit:
    """The most of a medicine, in one unit, over one period."""

    amount: float
    unit: str  # "mg", "ml", "unit", or a counted unit ("puff", "tablet", ...)
    per: str  # one of PERIODS

    def describe(self) -> str:
        """ "400 mg", "1,200 mg in 24 hours", "6 mg per course"."""
        amount = format_amount(self.amount, self.unit)
        return {"dose": amount, "24 hours": f"{amount} in 24 hours"}.get(
            self.per, f"{amount} per {self.per}"
        )


@dataclass(frozen=True)
class Caution:
    """A condition or circumstance in which the medicine needs a clinician's check first."""

    text: str  # as the source words it: "a stomach ulcer or a history of one"
    phrases: tuple[str, ...]  # lower-case phrases that state it in a question


@dataclass(frozen=True)
class Source:
    document: str
    entry: str
    kind: str  # what the document is (synthetic teaching vocabulary)
    dose: str  # the text the single-dose limits come from
    max: str | None  # the text the period limits come from


@dataclass(frozen=True)
class Medicine:
    key: str
    name: str
    aliases: tuple[str, ...]
    ingredient: str
    form: str
    drug_class: str
    allergy_groups: tuple[str, ...]
    limits: tuple[Limit, ...]
    cautions: tuple[Caution, ...]
    source: Source

    def limit(self, unit: str, per: str) -> Limit | None:
        return next((x for x in self.limits if x.unit == unit and x.per == per), None)


@dataclass(frozen=True)
class AllergyGroup:
    """Medicines a patient allergic to one of them should not be given."""

    key: str  # "nsaids"
    name: str  # "NSAIDs"
    terms: tuple[str, ...]  # how a patient names the group: "penicillin", "nsaids"
    members: tuple[str, ...]  # medicine keys


@dataclass(frozen=True)
class Mention:
    """A medicine named in a text."""

    medicine: Medicine
    start: int
    end: int
    exact: bool  # named by its name or an alias, not only by its ingredient


@dataclass(frozen=True)
class Formulary:
    medicines: Mapping[str, Medicine]
    groups: Mapping[str, AllergyGroup]
    source: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def _names(self) -> tuple[re.Pattern[str], dict[str, tuple[str, bool]]]:
        """One pattern over every name, alias and ingredient; name -> (key, exact)."""
        table: dict[str, tuple[str, bool]] = {}
        for med in self.medicines.values():
            for name in (med.name, *med.aliases):
                table[name.lower()] = (med.key, True)
        for med in self.medicines.values():
            table.setdefault(med.ingredient.lower(), (med.key, False))
        alternatives = "|".join(re.escape(n) for n in sorted(table, key=len, reverse=True))
        return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE), table

    def mentions(self, text: str) -> list[Mention]:
        """Every medicine named in `text`, in order."""
        pattern, table = self._names
        out = []
        for match in pattern.finditer(text):
            key, exact = table[match.group(0).lower()]
            out.append(Mention(self.medicines[key], match.start(), match.end(), exact))
        return out

    @cached_property
    def _cautions(self) -> tuple[re.Pattern[str], dict[str, list[tuple[str, Caution]]]]:
        table: dict[str, list[tuple[str, Caution]]] = {}
        for med in self.medicines.values():
            for caution in med.cautions:
                for phrase in caution.phrases:
                    table.setdefault(phrase.lower(), []).append((med.key, caution))
        alternatives = "|".join(re.escape(p) for p in sorted(table, key=len, reverse=True))
        return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE), table

    def cautions_named(self, text: str) -> list[tuple[Medicine, Caution, int]]:
        """(medicine, caution, position) for every caution phrase in `text`."""
        pattern, table = self._cautions
        return [
            (self.medicines[key], caution, match.start())
            for match in pattern.finditer(text)
            for key, caution in table[match.group(0).lower()]
        ]

    @cached_property
    def _allergens(self) -> dict[str, frozenset[str]]:
        table: dict[str, set[str]] = {}
        for med in self.medicines.values():
            # An allergy to ibuprofen rules out ibuprofen gel, whose ingredient it is.
            for name in {med.name, *med.aliases, med.ingredient}:
                table.setdefault(name.lower(), set()).add(med.key)
        for keys in table.values():  # cross-reactivity: amoxicillin rules out flucloxacillin
            for key in list(keys):
                for group_key in self.medicines[key].allergy_groups:
                    keys.update(self.groups[group_key].members)
        for allergy_group in self.groups.values():
            for term in allergy_group.terms:
                table.setdefault(term, set()).update(allergy_group.members)
        return {term: frozenset(keys) for term, keys in table.items()}

    @cached_property
    def allergen_pattern(self) -> re.Pattern[str]:
        """Matches every term that names an allergen: a medicine, ingredient or group."""
        terms = sorted(self._allergens, key=len, reverse=True)
        body = "|".join(re.escape(t) for t in terms)
        return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)

    def allergic_conflicts(self, term: str) -> frozenset[str]:
        """Keys of the medicines an allergy to `term` rules out (empty when unknown): the
        medicines it names, those with it as their ingredient, and the other members of
        their allergy groups; or the members of the group it names ("penicillins")."""
        return self._allergens.get(term.lower(), frozenset())


def _medicine(raw: Mapping[str, Any]) -> Medicine:
    return Medicine(
        key=raw["key"],
        name=raw["name"],
        aliases=tuple(raw["aliases"]),
        ingredient=raw["ingredient"],
        form=raw["form"],
        drug_class=raw["drug_class"],
        allergy_groups=tuple(raw["allergy_groups"]),
        limits=tuple(Limit(float(x["amount"]), x["unit"], x["per"]) for x in raw["limits"]),
        cautions=tuple(Caution(c["text"], tuple(c["phrases"])) for c in raw["cautions"]),
        source=Source(**raw["source"]),
    )


def parse_formulary(raw: Mapping[str, Any]) -> Formulary:
    """A formulary from its JSON object; raises ValueError naming a malformed entry."""
    medicines = {m["key"]: _medicine(m) for m in raw["medicines"]}
    for med in medicines.values():
        bad = [x for x in med.limits if x.per not in PERIODS or x.amount <= 0]
        if bad:
            raise ValueError(f"formulary entry {med.key!r} has malformed limits {bad}")
    groups = {}
    for g in raw["allergy_groups"]:
        members = tuple(k for k, m in medicines.items() if g["key"] in m.allergy_groups)
        groups[g["key"]] = AllergyGroup(g["key"], g["name"], tuple(g["terms"]), members)
    unknown = {k for m in medicines.values() for k in m.allergy_groups} - set(groups)
    if unknown:
        raise ValueError(f"formulary names allergy groups it does not define: {sorted(unknown)}")
    return Formulary(medicines, groups, dict(raw.get("source", {})))


@lru_cache(maxsize=1)
def load_formulary() -> Formulary:
    """The shipped formulary, read once."""
    text = resources.files(__package__).joinpath("data", DATA_FILE).read_text("utf-8")
    return parse_formulary(json.loads(text))
