"""Writes the clinical rule checks' formulary from the corpus's medicines table.

The rule checks (`clinalign.common.clinical_rules`) read their facts from a formulary data
file, as clinicians and rule engines consult a formulary rather than the code that wrote a
text. Its facts are those of `data/medications.json`, a synthetic teaching vocabulary of
usual adult doses in the style of a patient leaflet (not clinical guidance, and not a
published formulary); this module turns each entry's free-text `dose`, `max`, `class` and
`cautions` into explicit limits with units, allergy groups and match phrases, keeping the
text each came from as its source. A test checks the shipped file against this generator.

What is written here rather than read from the table, each listed below: other names of a
medicine (international and older spellings), plain-language synonyms of a caution, and
the allergy groups (medicines a patient allergic to one of them should not be given),
recognised from a medicine's class as the table words it. A preparation whose name starts
with another entry's name ("ibuprofen 5% gel") has that entry as its ingredient and
shares its allergy groups.

    python -m clinalign.foundation.formulary [OUT_FILE]
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from clinalign.common.clinical_rules.quantities import parse_quantities

from .vocab import Medication, load_vocabulary

DEFAULT_PATH = (
    Path(__file__).resolve().parents[1] / "common" / "clinical_rules" / "data" / "formulary.json"
)
SOURCE_DOCUMENT = "clinalign/foundation/data/medications.json"
SOURCE_KIND = "synthetic teaching vocabulary (usual adult doses in the style of a patient leaflet)"

# key -> (display name, words of a medicine's `class` that put it in the group, terms a
# patient uses for the group)
ALLERGY_GROUPS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "penicillins": (
        "penicillins",
        "penicillin",
        ("penicillin", "penicillins", "penicillin antibiotics"),
    ),
    "nsaids": (
        "NSAIDs",
        "non-steroidal anti-inflammatory",
        (
            "nsaid",
            "nsaids",
            "non-steroidal anti-inflammatory",
            "non-steroidal anti-inflammatories",
            "non-steroidal anti-inflammatory medicines",
            "anti-inflammatories",
            "anti-inflammatory medicines",
            "anti-inflammatory painkillers",
        ),
    ),
    "tetracyclines": ("tetracyclines", "tetracycline", ("tetracycline", "tetracyclines")),
}
OTHER_NAMES: dict[str, tuple[str, ...]] = {
    "paracetamol": ("acetaminophen",),
    "salbutamol": ("albuterol",),
    "beclometasone": ("beclomethasone",),
    "chlorphenamine": ("chlorpheniramine",),
    "gtn_spray": ("glyceryl trinitrate spray", "glyceryl trinitrate"),
    "furosemide": ("frusemide",),
    "ferrous_sulfate": ("ferrous sulphate",),
    "aciclovir": ("acyclovir",),
    "vitamin_d": ("colecalciferol",),
}
CAUTION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "kidney problems": ("kidney disease", "a kidney problem", "kidney failure"),
    "liver problems": ("liver disease", "a liver problem"),
    "a stomach ulcer": ("a peptic ulcer", "a stomach ulcer"),
    "heart rhythm problems": ("an irregular heartbeat", "a heart rhythm problem"),
    "an overactive thyroid": ("hyperthyroidism",),
}
# Words naming a preparation's form, not its ingredient ("salbutamol inhaler").
_FORM_WORDS = re.compile(r"\s+(?:nasal spray|eye drops|inhaler|spray|cream|gel|husk|antacid)$")
_STRENGTH = re.compile(r"\s+\d+(?:\.\d+)?%")
_DOSE_QUALIFIER = re.compile(r"^low-dose\s+")  # "aspirin" at other doses is another medicine
_ALLERGY_CAUTION = re.compile(r"^an allergy to (?P<allergen>.+)$")


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 6)


def _strip_article(text: str) -> str:
    return re.sub(r"^(?:a|an|the)\s+", "", text.lower())


def _ingredient(med: Medication) -> str:
    plain = _STRENGTH.sub("", med.name.lower())
    return _DOSE_QUALIFIER.sub("", _FORM_WORDS.sub("", plain))


def _aliases(med: Medication, taken: set[str]) -> list[str]:
    """Other names that name this medicine only: without its strength or form words."""
    name = med.name.lower()
    candidates = [_STRENGTH.sub("", name), *OTHER_NAMES.get(med.key, ())]
    if not _DOSE_QUALIFIER.match(name):
        candidates.append(_ingredient(med))
    out: list[str] = []
    for alias in candidates:
        if alias != name and alias not in taken and alias not in out:
            out.append(alias)
    return out


def _limits(med: Medication) -> list[dict[str, Any]]:
    """Largest single dose per unit (from `dose`), and the amount per period (from `max`)."""
    single: dict[str, float] = {}
    for q in parse_quantities(med.dose):
        if q.role in ("dose", "limit"):
            single[q.unit] = max(single.get(q.unit, 0.0), q.amount)
    out = [{"amount": _number(a), "unit": u, "per": "dose"} for u, a in single.items()]
    for q in parse_quantities(med.max or ""):
        if q.role not in ("dose", "limit"):
            continue
        if q.period not in ("24 hours", "course"):
            raise ValueError(f"{med.key}: max {med.max!r} states no period for {q.amount}")
        out.append({"amount": _number(q.amount), "unit": q.unit, "per": q.period})
    return out


def _cautions(med: Medication, groups: list[str], by_term: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for text in med.cautions:
        allergy = _ALLERGY_CAUTION.match(text)
        if allergy:  # the allergy rule reads these; check that the groups say the same
            allergen = allergy.group("allergen")
            if allergen != "any of the ingredients" and by_term.get(allergen) not in groups:
                raise ValueError(f"{med.key}: caution {text!r} is in no allergy group of it")
            continue
        head = text.lower().removesuffix(" or a history of one")
        phrases = [text.lower(), head, *CAUTION_SYNONYMS.get(head, ())]
        stripped = list(dict.fromkeys(_strip_article(p) for p in phrases))
        out.append({"text": text, "phrases": stripped})
    return out


def _allergy_groups(med: Medication, by_name: dict[str, Medication]) -> list[str]:
    own = [k for k, (_, words, _) in ALLERGY_GROUPS.items() if words in med.drug_class.lower()]
    parent = by_name.get(_ingredient(med))
    if parent is not None and parent.key != med.key:
        own += [k for k in _allergy_groups(parent, by_name) if k not in own]
    return own


def _entry(med: Medication, by_name: dict[str, Medication], taken: set[str]) -> dict[str, Any]:
    groups = _allergy_groups(med, by_name)
    by_term = {t: k for k, (_, _, terms) in ALLERGY_GROUPS.items() for t in terms}
    return {
        "key": med.key,
        "name": med.name,
        "aliases": _aliases(med, taken),
        "ingredient": _ingredient(med),
        "form": med.kind,
        "drug_class": med.drug_class,
        "allergy_groups": groups,
        "limits": _limits(med),
        "cautions": _cautions(med, groups, by_term),
        "source": {
            "document": SOURCE_DOCUMENT,
            "entry": med.key,
            "kind": SOURCE_KIND,
            "dose": med.dose,
            "max": med.max,
        },
    }


def build() -> dict[str, Any]:
    """The formulary as a JSON-ready object."""
    meds = list(load_vocabulary().medications.values())
    by_name = {m.name.lower(): m for m in meds}
    raw = resources.files(__package__).joinpath("data", "medications.json").read_bytes()
    return {
        "_comment": (
            "Generated by `python -m clinalign.foundation.formulary` from the source below; "
            "do not edit by hand. Synthetic: not clinical guidance, not a published formulary."
        ),
        "source": {
            "document": SOURCE_DOCUMENT,
            "kind": SOURCE_KIND,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "written_here": "aliases from OTHER_NAMES, caution synonyms, allergy groups",
        },
        "allergy_groups": [
            {"key": key, "name": name, "class_words": words, "terms": list(terms)}
            for key, (name, words, terms) in ALLERGY_GROUPS.items()
        ],
        "medicines": [_entry(m, by_name, set(by_name)) for m in meds],
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
