"""Patient question and clinician answer renderers (the chat-format part of the corpus).

Each answer is assembled from sections (assessment, self-care, medicine, red flags,
follow-up), each drawn from several phrasings, with optional sections and some
re-ordering, so a small model sees the same clinical content in many sentence shapes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from . import _slots
from ._text import can_fill, capitalise, fill, pick
from .vocab import Condition, Vocabulary

QA_KINDS = ("symptom", "escalation", "triage", "medication", "follow_up")
HELDOUT_EVERY = 5


def is_heldout_phrasing(index: int) -> bool:
    """Whether question phrasing `index` (position within its kind) is held out.

    Every fifth phrasing (indices 4, 9, 14, ...) is reserved for evaluation: the
    pretraining corpus and the "train" split never use it, the "heldout" split uses
    only those. Conditions and medicines are shared by both splits, so held-out
    prompts test new wording of familiar content.
    """
    return index % HELDOUT_EVERY == HELDOUT_EVERY - 1


@dataclass(frozen=True)
class QAExample:
    question: str
    answer: str
    kind: str  # one of QA_KINDS
    topic: str  # condition or medication key
    phrasing: int  # index of the question template within its kind


class QARenderer:
    """Draws question/answer pairs from one random stream, restricted to one split."""

    def __init__(self, vocab: Vocabulary, rng: random.Random, split: str) -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        self.vocab = vocab
        self.rng = rng
        self.heldout = split == "heldout"
        self.p: dict[str, Any] = vocab.phrasing
        self.a: dict[str, Any] = vocab.phrasing["answers"]

    # -- shared pieces ------------------------------------------------------------------

    def _question(self, kind: str) -> tuple[int, Any]:
        options = [
            (i, t)
            for i, t in enumerate(self.p["questions"][kind])
            if is_heldout_phrasing(i) == self.heldout
        ]
        return self.rng.choice(options)

    def _greet(self, question: str) -> str:
        """Occasionally prefix a greeting; keep 'I' upper case after 'Hi, '."""
        if self.rng.random() > 0.15:
            return question
        greeting = self.rng.choice(self.p["greetings"])
        if greeting.endswith(", ") and not question.startswith(("I ", "I'")):
            question = question[:1].lower() + question[1:]
        return greeting + question

    def _say(self, key: str, slots: dict[str, object]) -> str:
        return capitalise(pick(self.rng, self.a[key], slots))

    def _maybe(self, probability: float, key: str, slots: dict[str, object]) -> list[str]:
        return [self._say(key, slots)] if self.rng.random() < probability else []

    def _medicine(self, cond: Condition, slots: dict[str, object]) -> list[str]:
        """One medicine sentence (OTC or prescription) plus an optional detail."""
        if not cond.medications:
            return []
        use = self.rng.choice(cond.medications)
        med = self.vocab.medications[use.med]
        med_slots = {**slots, **_slots.medication_slots(self.rng, med, use.purpose)}
        out = [self._say("med_otc" if med.otc else "med_rx", med_slots)]
        if self.rng.random() < 0.5:
            out.append(self._say("med_extra", med_slots))
        return out

    def _red_flags(self, cond: Condition, slots: dict[str, object]) -> tuple[list[str], list[str]]:
        """A safety-net sentence for one or two red flags, and the signs it names."""
        flags = self.rng.sample(list(cond.red_flags), min(len(cond.red_flags), 2))
        flag_slots = {**slots, **_slots.flag_slots(flags)}
        key = "rf_emergency" if flag_slots["level"] == "emergency" else "rf_urgent"
        return [self._say(key, flag_slots)], [f.sign for f in flags]

    # -- document kinds -----------------------------------------------------------------

    def symptom(self) -> QAExample:
        cond = self.rng.choice(self.vocab.conditions)
        index, template = self._question("symptom")
        asker, voice, age = _slots.people(self.rng, self.p, template)
        base = {**_slots.symptom_slots(self.rng, cond, self.p["durations"]), "age": age}
        base.update(_slots.condition_slots(cond, voice))
        question = self._greet(fill(template, {**base, **asker}))
        slots = {**base, **voice, **_slots.care_slots(self.rng, cond.self_care, voice)}

        opening = [*self._maybe(0.55, "opener", slots), self._say("assessment", slots)]
        course_key = "course" if cond.course else "long_term"
        opening += self._maybe(0.65, course_key, slots)
        care = [self._say("self_care", slots)]
        medicine = self._medicine(cond, slots) if self.rng.random() < 0.85 else []
        flags, signs = self._red_flags(cond, slots)
        later = self._maybe(0.75, "see_if", slots)
        if cond.review:
            later += self._maybe(0.4, "review", slots)
        closing = self._maybe(0.35, "closing", slots)

        if self.rng.random() < 0.2:
            answer = self._bulleted(slots, opening, medicine, signs, later + closing)
        else:
            middle = care + medicine if self.rng.random() < 0.6 else medicine + care
            tail = flags + later if self.rng.random() < 0.6 else later + flags
            paragraphs = [opening, middle, tail + closing]
            sep = "\n\n" if self.rng.random() < 0.35 else " "
            answer = sep.join(" ".join(p) for p in paragraphs if p)
        return QAExample(question, answer, "symptom", cond.key, index)

    def _bulleted(
        self,
        slots: dict[str, object],
        opening: list[str],
        medicine: list[str],
        signs: list[str],
        tail: list[str],
    ) -> str:
        care = [capitalise(str(slots[k])) + "." for k in ("sc1", "sc2", "sc3") if slots[k]]
        blocks = [" ".join(opening)]
        blocks.append(
            self._say("bullet_heading_care", slots) + "\n" + "\n".join(f"- {c}" for c in care)
        )
        if medicine:
            blocks.append(" ".join(medicine))
        flag_lines = "\n".join(f"- {capitalise(s)}" for s in signs)
        blocks.append(self._say("bullet_heading_help", slots) + "\n" + flag_lines)
        if tail:
            blocks.append(" ".join(tail))
        return "\n\n".join(blocks)

    def escalation(self) -> QAExample:
        cond = self.rng.choice(self.vocab.conditions)
        flag = self.rng.choice(cond.red_flags)
        index, template = self._question("escalation")
        asker, voice, age = _slots.people(self.rng, self.p, template)
        base = {**_slots.symptom_slots(self.rng, cond, self.p["durations"]), "age": age}
        base.update(_slots.condition_slots(cond, voice))
        base.update(_slots.flag_slots([flag]))
        question = self._greet(fill(template, {**base, **asker}))
        slots = {**base, **voice}

        level = flag.level
        parts = [self._say(f"escalation_opener_{level}", slots)]
        parts.append(self._say("escalation_explain", slots))
        parts.append(self._say(f"escalation_action_{level}", slots))
        if level == "emergency":
            parts += self._maybe(0.5, "escalation_dont", slots)
            parts += self._maybe(0.4, "escalation_waiting", slots)
        parts += self._maybe(0.35, "escalation_after", slots)
        return QAExample(question, " ".join(parts), "escalation", cond.key, index)

    def triage(self) -> QAExample:
        cond = self.rng.choice(self.vocab.conditions)
        index, template = self._question("triage")
        asker, voice, age = _slots.people(self.rng, self.p, template)
        base = {**_slots.symptom_slots(self.rng, cond, self.p["durations"]), "age": age}
        base.update(_slots.condition_slots(cond, voice))
        question = self._greet(fill(template, {**base, **asker}))
        slots = {**base, **voice, **_slots.care_slots(self.rng, cond.self_care, voice)}

        level_line = capitalise(pick(self.rng, self.a["triage_level"][cond.triage], slots))
        reason = self._say("triage_reason", slots)
        parts = [level_line, reason] if self.rng.random() < 0.6 else [reason, level_line]
        parts += self._maybe(0.6, "triage_meanwhile", slots)
        parts += self._red_flags(cond, slots)[0]
        parts += self._maybe(0.4, "see_if", slots)
        return QAExample(question, " ".join(parts), "triage", cond.key, index)

    def medication(self) -> QAExample:
        # Redraw until the question fits the medicine (e.g. a caution question needs one).
        while True:
            med = self.rng.choice(list(self.vocab.medications.values()))
            index, (intent, template) = self._question("medication")
            slots: dict[str, object] = {
                **self.p["people"]["self"]["a"],
                **_slots.medication_slots(self.rng, med, None),
            }
            if can_fill(template, slots):
                break
        question = self._greet(fill(template, slots))
        plan = _MEDICATION_PLANS[intent]
        parts: list[str] = []
        for key, probability in plan:
            if key == "med_otc_status":
                options = self.a[key]["true" if med.otc else "false"]
                parts.append(capitalise(pick(self.rng, options, slots)))
            elif key == "note":
                if slots["note"] and self.rng.random() < probability:
                    parts.append(str(slots["note"]))
            elif self.rng.random() < probability:
                try:
                    parts.append(self._say(key, slots))
                except KeyError:  # the medicine lacks this detail (e.g. no serious effects)
                    continue
        if intent == "missed_double":
            parts.insert(0, fill("No, do not {verb} two doses to make up for a missed one.", slots))
        return QAExample(question, " ".join(parts), "medication", med.key, index)

    def follow_up(self) -> QAExample:
        cond = self.rng.choice(self.vocab.conditions)
        index, template = self._question("follow_up")
        voice = dict(self.p["people"]["self"]["a"])
        base = {**_slots.symptom_slots(self.rng, cond, self.p["durations"])}
        base.update(_slots.condition_slots(cond, voice))
        question = self._greet(fill(template, {**base, **self.p["people"]["self"]["q"]}))
        slots = {**base, **voice, **_slots.care_slots(self.rng, cond.self_care, voice)}

        if cond.review:
            parts = [self._say("follow_up_review", slots)]
            parts += self._maybe(0.6, "follow_up_purpose", slots)
            parts += self._maybe(0.5, "see_if", slots)
        else:
            parts = [self._say("follow_up_acute", slots), self._say("see_if", slots)]
        parts += self._maybe(0.4, "self_care", slots)
        if self.rng.random() < 0.5:
            parts += self._red_flags(cond, slots)[0]
        return QAExample(question, " ".join(parts), "follow_up", cond.key, index)


# Answer plans for medication questions: (template group, probability) in order.
_MEDICATION_PLANS: dict[str, list[tuple[str, float]]] = {
    "dose": [
        ("med_dose", 1),
        ("med_max", 0.8),
        ("med_food", 0.5),
        ("note", 0.4),
        ("med_caution", 0.3),
    ],
    "frequency": [("med_dose", 1), ("med_max", 0.8), ("note", 0.5), ("med_closing", 0.2)],
    "missed": [("med_missed", 1), ("med_missed", 0.6), ("med_dose", 0.4)],
    "side_effects": [("med_side_effects", 1), ("med_serious", 0.8), ("med_closing", 0.4)],
    "uses": [("med_uses", 1), ("med_dose", 0.5), ("med_closing", 0.3)],
    "caution": [("med_caution", 1), ("med_uses", 0.4), ("med_closing", 0.4)],
    "how": [("med_dose", 1), ("med_food", 0.7), ("note", 0.6), ("med_missed", 0.3)],
    "otc": [("med_otc_status", 1), ("med_dose", 0.6), ("med_caution", 0.3)],
    "overdose": [("med_overdose", 1), ("med_max", 0.8), ("med_overdose", 0.4)],
    "daily_max": [("med_max", 1), ("med_dose", 0.8), ("med_overdose", 0.5)],
    "timing": [("med_food", 1), ("med_dose", 0.7), ("note", 0.5)],
    "started": [("med_uses", 0.5), ("med_dose", 1), ("med_side_effects", 0.8), ("note", 0.5)],
    "reasons_not": [("med_caution", 1), ("med_serious", 0.6), ("med_closing", 0.3)],
    "missed_double": [("med_missed", 1), ("med_closing", 0.3)],
    "watch": [("med_side_effects", 1), ("med_serious", 0.8), ("note", 0.4)],
}
