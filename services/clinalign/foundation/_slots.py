"""Turn vocabulary entries into template slots for one rendered document.

Each helper returns a plain dict of slot values. Person slots come in two voices: the
asker's (`q`: "I have", "my father has") and the clinician's (`a`: "you have",
"he has"), so one question/answer pair stays grammatical whoever it is about.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from ._text import fill, join_list, sample_some
from .vocab import Condition, Medication, RedFlag

Slots = dict[str, object]

_VERB_ING = {"take": "taking", "use": "using", "apply": "applying", "chew": "chewing"}


def people(rng: random.Random, phrasing: dict[str, Any], template: str) -> tuple[Slots, Slots, str]:
    """Asker slots, clinician slots and an age for a question `template`.

    Templates that never name `{who}` are asked by the patient about themselves.
    """
    table = phrasing["people"]
    ages = table["ages"]
    about_other = "{who}" in template.lower() and rng.random() < table["share_other"]
    if not about_other:
        low, high = ages["self"]
        return dict(table["self"]["q"]), dict(table["self"]["a"]), str(rng.randint(low, high))
    relation, pronoun, age_group = rng.choice(table["relations"])
    forms = table["pronouns"][pronoun]
    asker: Slots = {"who": f"my {relation}", **forms}
    clinician: Slots = {
        "patient": f"your {relation}",
        **forms,
        "urge": f"encourage {forms['obj']} to",
    }
    low, high = ages[age_group]
    return asker, clinician, str(rng.randint(low, high))


def condition_slots(cond: Condition, voice: Mapping[str, object]) -> Slots:
    """Name, description and follow-up phrases; person slots inside data are filled."""
    return {
        "name": cond.name,
        "short": cond.short,
        "about": cond.about,
        "course": cond.course,
        "see_if": fill(cond.see_if, voice),
        "review": fill(cond.review, voice) if cond.review else None,
    }


def symptom_slots(rng: random.Random, cond: Condition, durations: dict[str, list[str]]) -> Slots:
    return {
        "symptoms": join_list(sample_some(rng, cond.symptoms, 1, 3)),
        "dur": rng.choice(durations[cond.onset]),
    }


def care_slots(rng: random.Random, items: Sequence[str], voice: Mapping[str, object]) -> Slots:
    """sc1..sc3: self-care verb phrases in the given voice (missing ones are None)."""
    chosen = [fill(item, voice) for item in sample_some(rng, items, 3, 3)]
    return {f"sc{i + 1}": chosen[i] if i < len(chosen) else None for i in range(3)}


def medication_slots(rng: random.Random, med: Medication, purpose: str | None) -> Slots:
    verb = med.verb
    return {
        "med": med.name,
        "verb": verb,
        "verb_ing": _VERB_ING.get(verb, verb + "ing"),
        "regimen": med.regimen,
        "dose": med.dose,
        "frequency": med.frequency,
        "max": med.max,
        "food": med.food,
        "class": med.drug_class,
        "uses": med.uses,
        "for": purpose,
        "course_tail": f" {med.course}" if med.course else "",
        "caution": rng.choice(med.cautions) if med.cautions else None,
        "side_effects": join_list(sample_some(rng, med.side_effects, 1, 2)),
        "serious": join_list(sample_some(rng, med.serious, 1, 2), "or") if med.serious else None,
        "note": rng.choice(med.notes) if med.notes else None,
    }


def flag_slots(flags: Sequence[RedFlag]) -> Slots:
    """signs/concern/level for one or more red flags; emergency wins over urgent.

    The most severe flag is named first, so `concern` explains the chosen `level`.
    """
    flags = sorted(flags, key=lambda f: f.level != "emergency")
    level = flags[0].level
    return {
        "signs": join_list([f.sign for f in flags], "or"),
        "sign": flags[0].sign,
        "concern": flags[0].concern,
        "level": level,
    }
