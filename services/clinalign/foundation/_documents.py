"""Plain-text corpus documents: discharge instructions, medicine leaflets, condition
information pages and clinician triage notes. They give the model the same clinical
vocabulary in non-chat registers; each ends with EOS like the chat documents.
"""

from __future__ import annotations

import random
from typing import Any

from clinalign.common.prompts import EOS_TOKEN

from . import _slots
from ._text import capitalise, fill, join_list, pick, sample_some
from .vocab import Vocabulary

DOCUMENT_KINDS = ("discharge", "leaflet", "info", "note")

# Discharge and leaflet documents address the reader as "you".
_YOU = {
    "subj": "you",
    "obj": "you",
    "poss": "your",
    "self": "yourself",
    "have": "have",
    "are": "are",
    "do": "do",
    "s": "",
    "patient": "you",
    "urge": "try to",
}
# Triage notes describe the caller in the third person.
_THEY = {
    "subj": "they",
    "obj": "them",
    "poss": "their",
    "self": "themselves",
    "have": "have",
    "are": "are",
    "do": "do",
    "s": "",
    "patient": "the caller",
    "urge": "try to",
}


class DocumentRenderer:
    def __init__(self, vocab: Vocabulary, rng: random.Random) -> None:
        self.vocab = vocab
        self.rng = rng
        self.d: dict[str, Any] = vocab.phrasing["documents"]

    def _say(self, key: str, slots: dict[str, object]) -> str:
        return capitalise(pick(self.rng, self.d[key], slots))

    def _heading(self, key: str) -> str:
        return self.rng.choice(self.d[key]) + (":" if self.rng.random() < 0.5 else "")

    def discharge(self) -> str:
        stay = self.rng.choice(self.vocab.admissions)
        slots: dict[str, object] = {
            **_YOU,
            "reason": stay.reason,
            "stay": stay.stay,
            "follow_up": stay.follow_up,
        }
        lines = [self._say("discharge_title", slots), "", self._say("discharge_intro", slots)]
        for heading, items in (
            ("discharge_heading_activity", stay.activity),
            ("discharge_heading_wound", stay.wound),
            ("discharge_heading_diet", stay.diet),
        ):
            if items and (heading != "discharge_heading_diet" or self.rng.random() < 0.7):
                lines += ["", self._heading(heading)]
                for item in sample_some(self.rng, items, 2, len(items)):
                    lines.append(self._say("discharge_item", {"item": item}))
        lines += ["", self._heading("discharge_heading_meds")]
        for use in stay.medications:
            med = self.vocab.medications[use.med]
            med_slots = _slots.medication_slots(self.rng, med, use.purpose)
            lines.append(self._say("discharge_med", med_slots))
        lines += [
            "",
            self._heading("discharge_heading_warning"),
            self._say("discharge_warning_intro", slots),
        ]
        signs = sample_some(self.rng, stay.warning_signs, 3, len(stay.warning_signs))
        lines += [f"- {capitalise(sign)}" for sign in signs]
        lines += [
            "",
            self._heading("discharge_heading_follow"),
            self._say("discharge_follow", slots),
        ]
        if self.rng.random() < 0.5:
            lines += ["", self._say("discharge_closing", slots)]
        return "\n".join(lines) + EOS_TOKEN

    def leaflet(self) -> str:
        med = self.rng.choice(list(self.vocab.medications.values()))
        slots = {**_YOU, **_slots.medication_slots(self.rng, med, None)}
        answers = self.vocab.phrasing["answers"]

        def say(key: str) -> str:
            return capitalise(pick(self.rng, answers[key], slots))

        lines = [self._say("leaflet_title", slots), ""]
        lines += [self._heading("leaflet_heading_use"), say("med_uses"), ""]
        how = [say("med_dose")]
        if med.max:
            how.append(say("med_max"))
        how.append(say("med_food"))
        how += list(med.notes)
        lines += [self._heading("leaflet_heading_how"), " ".join(how), ""]
        lines += [self._heading("leaflet_heading_side"), say("med_side_effects")]
        if med.serious:
            lines.append(say("med_serious"))
        if med.cautions:
            intro = self.rng.choice(self.d["leaflet_caution_intro"])
            lines += [
                "",
                self._heading("leaflet_heading_care"),
                f"{intro} {join_list(list(med.cautions), 'or')}.",
            ]
        lines += [
            "",
            capitalise(pick(self.rng, answers["med_otc_status"][str(med.otc).lower()], slots)),
        ]
        return "\n".join(lines) + EOS_TOKEN

    def info(self) -> str:
        cond = self.rng.choice(self.vocab.conditions)
        answers = self.vocab.phrasing["answers"]
        slots: dict[str, object] = {**_YOU, **_slots.condition_slots(cond, _YOU)}
        slots["name_title"] = capitalise(cond.name)
        slots["symptoms"] = join_list(sample_some(self.rng, cond.symptoms, 3, 5))
        lines = [self._say("info_title", slots), ""]
        intro = [f"{capitalise(cond.name)} {cond.about}.", self._say("info_symptoms", slots)]
        if cond.course:
            intro.append(capitalise(pick(self.rng, answers["course"], slots)))
        else:
            intro.append(self.rng.choice(answers["long_term"]))
        lines += [" ".join(intro), "", self.rng.choice(self.d["info_care_intro"])]
        for item in sample_some(self.rng, cond.self_care, 3, 5):
            lines.append(f"- {capitalise(fill(item, _YOU))}.")
        if cond.medications:
            use = self.rng.choice(cond.medications)
            med = self.vocab.medications[use.med]
            med_slots = {**slots, **_slots.medication_slots(self.rng, med, use.purpose)}
            key = "med_otc" if med.otc else "med_rx"
            lines += ["", capitalise(pick(self.rng, answers[key], med_slots))]
        lines += ["", self.rng.choice(answers["bullet_heading_help"])]
        lines += [f"- {capitalise(flag.sign)}" for flag in cond.red_flags]
        lines += ["", capitalise(pick(self.rng, answers["see_if"], slots))]
        return "\n".join(lines) + EOS_TOKEN

    def note(self) -> str:
        cond = self.rng.choice(self.vocab.conditions)
        flags = self.rng.sample(list(cond.red_flags), min(2, len(cond.red_flags)))
        flag = _slots.flag_slots(flags)
        slots: dict[str, object] = {
            **_THEY,
            **_slots.symptom_slots(self.rng, cond, self.vocab.phrasing["durations"]),
            **_slots.condition_slots(cond, _THEY),
            **_slots.care_slots(self.rng, cond.self_care, _THEY),
            **flag,
            "age": str(self.rng.randint(19, 90)),
            "triage_label": self.d["triage_labels"][cond.triage],
            "level_label": self.d["level_labels"][str(flag["level"])],
        }
        if cond.medications:
            use = self.rng.choice(cond.medications)
            slots.update(
                _slots.medication_slots(self.rng, self.vocab.medications[use.med], use.purpose)
            )
        lines = [self.rng.choice(self.d["note_title"])]
        for section, templates in self.d["note_lines"].items():
            if section == "meds" and (not cond.medications or self.rng.random() < 0.3):
                continue
            lines.append(capitalise(pick(self.rng, templates, slots)))
        return "\n".join(lines) + EOS_TOKEN
