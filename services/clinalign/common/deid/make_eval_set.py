"""Generate the synthetic, labelled evaluation notes (``data/eval_notes.jsonl``).

Every note is assembled from templates whose identifier slots are filled with invented
values, and each identifier's offsets are recorded as it is written, so the gold spans
are exact by construction. Offsets count Python ``str`` code points. Gold conventions:
a name span holds the name only (``Dr.`` and ``MD`` stay outside), an age span holds the
number only, a cue word (``MRN:``) stays outside the identifier after it, and a state
abbreviation is not an identifier (Safe Harbor keeps states).

    python -m clinalign.common.deid.make_eval_set            # rewrite the shipped file
    python -m clinalign.common.deid.make_eval_set --check    # exit 1 if it would change

Deterministic: one seeded ``random.Random`` drives everything.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clinalign.common.deid import _synth as s
from clinalign.common.deid._templates import NOTE_KINDS

SEED = 20240314
DEFAULT_PATH = Path(__file__).parent / "data" / "eval_notes.jsonl"

Piece = tuple[str, str | None]  # (text, entity type or None for plain text)


@dataclass
class Cast:
    """The people and places of one note, so that repeated mentions agree."""

    patient: s.Person
    age: int
    relatives: list[tuple[str, s.Person]]
    clinicians: list[s.Person]
    city: tuple[str, str]


@dataclass
class NoteBuilder:
    parts: list[str] = field(default_factory=list)
    spans: list[dict[str, object]] = field(default_factory=list)
    length: int = 0

    def add(self, text: str, entity: str | None = None) -> None:
        if entity is not None and text:
            self.spans.append(
                {"start": self.length, "end": self.length + len(text), "type": entity}
            )
        self.parts.append(text)
        self.length += len(text)

    def text(self) -> str:
        return "".join(self.parts)


def _title(rng: random.Random, p: s.Person) -> str:
    options = ("Mrs", "Mrs.", "Ms", "Ms.", "Miss") if p.sex == "F" else ("Mr", "Mr.")
    return rng.choice(options) + " "


def _age_pieces(rng: random.Random, age: int, sex: str) -> list[Piece]:
    noun = rng.choice(("woman", "female", "lady") if sex == "F" else ("man", "male", "gentleman"))
    kind = "AGE" if age > 89 else None
    form = rng.randrange(7)
    if form == 0:
        return [(str(age), kind), (f"-year-old {noun}", None)]
    if form == 1:
        return [(str(age), kind), (f" year old {noun}", None)]
    if form == 2:
        return [(str(age), kind), (rng.choice((" yo ", "yo ", " y/o ", " y.o. ")) + noun, None)]
    if form == 3:
        return [(f"{noun} aged ", None), (str(age), kind)]
    if form == 4:
        return [(f"{noun}, age ", None), (str(age), kind)]
    if form == 5:
        return [(str(age), kind), (sex, None)]
    return [(str(age), kind), (f" years old {noun}", None)]


class Slots:
    """Fills ``{slot}`` markers; each call draws a fresh value where that makes sense."""

    def __init__(self, rng: random.Random, cast: Cast) -> None:
        self.rng, self.cast = rng, cast

    def __call__(self, name: str) -> list[Piece]:
        fill: Callable[[], list[Piece]] | None = getattr(self, f"s_{name}", None)
        if fill is None:
            raise KeyError(f"unknown template slot {{{name}}}")
        return fill()

    # -- people ----------------------------------------------------------------------
    def s_pt(self) -> list[Piece]:
        return [(self.cast.patient.full, "NAME")]

    def s_pt_first(self) -> list[Piece]:
        return [(self.cast.patient.first, "NAME")]

    def s_pt_title(self) -> list[Piece]:
        p = self.cast.patient
        name = p.last if self.rng.random() < 0.7 else p.full
        return [(_title(self.rng, p), None), (name, "NAME")]

    def s_pt_lf(self) -> list[Piece]:
        p = self.cast.patient
        last = p.last.upper() if self.rng.random() < 0.5 else p.last
        return [(f"{last}, {p.first}", "NAME")]

    def s_pt_caps(self) -> list[Piece]:
        p = self.cast.patient
        return [(f"{p.last.upper()}, {p.first.upper()}", "NAME")]

    def s_pt_middle(self) -> list[Piece]:
        p, rng = self.cast.patient, self.rng
        middle = rng.choice("ABCDEFGHJKLMNPRSTW")
        return [(f"{p.first} {middle}. {p.last}", "NAME")]

    def s_pt_hyphen(self) -> list[Piece]:
        p, rng = self.cast.patient, self.rng
        return [(f"{p.first} {p.last}-{rng.choice(s.SURNAMES)}", "NAME")]

    def s_pt_lower(self) -> list[Piece]:
        return [(self.cast.patient.first.lower(), "NAME")]

    def s_rel_lower(self) -> list[Piece]:
        relation, who = self._relative()
        return [(f"my {relation} ", None), (who.first.lower(), "NAME")]

    def s_doc_caps(self) -> list[Piece]:
        d = self._clinician(1)
        return [
            (f"{d.last.upper()}, {d.first.upper()} {self.rng.choice('ABCDEFGH')}", "NAME"),
            (" MD", None),
        ]

    def s_pt_age(self) -> list[Piece]:
        return _age_pieces(self.rng, self.cast.age, self.cast.patient.sex)

    def s_pronoun(self) -> list[Piece]:
        return [("She" if self.cast.patient.sex == "F" else "He", None)]

    def s_pronoun_lower(self) -> list[Piece]:
        return [("she" if self.cast.patient.sex == "F" else "he", None)]

    def s_poss(self) -> list[Piece]:
        return [("her" if self.cast.patient.sex == "F" else "his", None)]

    def _relative(self) -> tuple[str, s.Person]:
        return self.rng.choice(self.cast.relatives)

    def s_rel(self) -> list[Piece]:
        relation, who = self._relative()
        poss = "her" if self.cast.patient.sex == "F" else "his"
        name = who.first if self.rng.random() < 0.6 else who.full
        sep = self.rng.choice((" ", ", ", " (")) if self.rng.random() < 0.5 else " "
        close = ")" if sep == " (" else ""
        return [(f"{poss} {relation}{sep}", None), (name, "NAME"), (close, None)]

    def s_rel_relation_free(self) -> list[Piece]:
        relation, who = self._relative()
        name = who.first if self.rng.random() < 0.5 else who.full
        return [(f"{relation} ", None), (name, "NAME")]

    def s_rel_first(self) -> list[Piece]:
        return [(self._relative()[1].first, "NAME")]

    def _clinician(self, index: int) -> s.Person:
        return self.cast.clinicians[index % len(self.cast.clinicians)]

    def _doc(self, index: int) -> list[Piece]:
        d, rng = self._clinician(index), self.rng
        form = rng.randrange(6)
        if form == 0:
            return [(rng.choice(("Dr. ", "Dr ")), None), (d.last, "NAME")]
        if form == 1:
            return [(rng.choice(("Dr. ", "Dr ")), None), (d.full, "NAME")]
        if form == 2:
            return [(d.full, "NAME"), (rng.choice((", MD", " MD", ", DO", ", FRCP")), None)]
        if form == 3:
            return [("Dr. ", None), (f"{d.first[0]}. {d.last}", "NAME")]
        if form == 4:
            return [(d.full, "NAME"), (", NP", None)]
        return [("Dr. ", None), (d.last, "NAME")]

    def s_doc(self) -> list[Piece]:
        return self._doc(0)

    def s_doc2(self) -> list[Piece]:
        return self._doc(1)

    def s_doc_last(self) -> list[Piece]:
        return [(self._clinician(0).last, "NAME")]

    def s_nurse(self) -> list[Piece]:
        n, rng = self._clinician(2), self.rng
        form = rng.randrange(4)
        if form == 0:
            return [(n.full, "NAME"), (", RN", None)]
        if form == 1:
            return [("RN ", None), (n.full, "NAME")]
        if form == 2:
            return [("Nurse ", None), (n.last, "NAME")]
        return [(n.first, "NAME"), (" (RN)", None)]

    # -- dates and numbers ----------------------------------------------------------
    def s_date(self) -> list[Piece]:
        return [(s.fmt_date(self.rng, s.random_date(self.rng)), "DATE")]

    def s_date_ny(self) -> list[Piece]:
        return [(s.fmt_date(self.rng, s.random_date(self.rng), with_year=False), "DATE")]

    def s_dob(self) -> list[Piece]:
        birth = 2024 - self.cast.age
        d = s.random_date(self.rng, birth, birth)
        return [(s.fmt_date(self.rng, d), "DATE")]

    def s_year(self) -> list[Piece]:
        return [(str(self.rng.randint(1995, 2024)), None)]

    def s_phone(self) -> list[Piece]:
        return [(s.phone(self.rng), "PHONE")]

    def s_email(self) -> list[Piece]:
        return [(s.email(self.rng, self.cast.patient), "EMAIL")]

    def s_email_doc(self) -> list[Piece]:
        return [(s.email(self.rng, self._clinician(0)), "EMAIL")]

    def s_ssn(self) -> list[Piece]:
        return [(s.ssn(self.rng), "SSN")]

    def s_mrn_cue(self) -> list[Piece]:
        cue = self.rng.choice(s.MRN_CUES)
        return [(cue, None), (s.mrn(self.rng), "MRN")]

    def s_member(self) -> list[Piece]:
        cue = self.rng.choice(s.MEMBER_CUES)
        return [(cue, None), (s.member_id(self.rng), "ACCOUNT")]

    def s_account(self) -> list[Piece]:
        cue = self.rng.choice(s.ACCOUNT_CUES)
        return [(cue, None), (s.account(self.rng), "ACCOUNT")]

    def s_licence(self) -> list[Piece]:
        cue = self.rng.choice(s.LICENCE_CUES)
        return [(cue, None), (s.licence(self.rng), "LICENSE")]

    def s_serial(self) -> list[Piece]:
        cue = self.rng.choice(s.SERIAL_CUES)
        return [(cue, None), (s.serial(self.rng), "DEVICE")]

    def s_rx(self) -> list[Piece]:
        cue = self.rng.choice(s.RX_CUES)
        return [(cue, None), (s.digits(self.rng, self.rng.randint(7, 9), True), "ID")]

    def s_url(self) -> list[Piece]:
        return [(s.url(self.rng), "URL")]

    def s_ip(self) -> list[Piece]:
        return [(s.ipv4(self.rng), "IP")]

    # -- places ----------------------------------------------------------------------
    def s_addr(self) -> list[Piece]:
        rng, (city, state) = self.rng, self.cast.city
        if rng.random() < 0.12:
            town = rng.choice(s.UK_TOWNS)
            return [
                (s.street(rng), "ADDRESS"),
                (", ", None),
                (town, "CITY"),
                (" ", None),
                (s.uk_postcode(rng), "ZIP"),
            ]
        sep = "\n" if rng.random() < 0.3 else ", "
        return [
            (s.street(rng), "ADDRESS"),
            (sep, None),
            (city, "CITY"),
            (f", {state} ", None),
            (s.zip_code(rng), "ZIP"),
        ]

    def s_city(self) -> list[Piece]:
        return [(self.cast.city[0], "CITY")]

    def s_state(self) -> list[Piece]:
        return [(self.cast.city[1], None)]

    def s_hospital(self) -> list[Piece]:
        return [(self.rng.choice(s.HOSPITALS), None)]

    # -- clinical content (never identifiers) ------------------------------------------
    def s_clin(self) -> list[Piece]:
        return [(self.rng.choice(s.CLINICAL), None)]

    def s_clin3(self) -> list[Piece]:
        return [(" ".join(self.rng.sample(s.CLINICAL, 3)), None)]

    def s_drug(self) -> list[Piece]:
        return [(self.rng.choice(s.DRUGS), None)]

    def s_druglist(self) -> list[Piece]:
        picks = self.rng.sample(s.DRUGS, self.rng.randint(4, 8))
        return [("\n".join(f"- {d}" for d in picks), None)]

    def s_problem(self) -> list[Piece]:
        return [(self.rng.choice(s.PROBLEMS), None)]

    def s_young_age(self) -> list[Piece]:
        return _age_pieces(self.rng, self.rng.randint(18, 89), self.rng.choice("FM"))

    def s_days(self) -> list[Piece]:
        return [(str(self.rng.randint(2, 14)), None)]


_SLOT = re.compile(r"\{(\w+)\}")


def render(template: str, slots: Slots, note: NoteBuilder) -> None:
    """Write ``template`` into ``note``, expanding each ``{slot}``."""
    pos = 0
    for m in _SLOT.finditer(template):
        note.add(template[pos : m.start()])
        for text, entity in slots(m.group(1)):
            note.add(text, entity)
        pos = m.end()
    note.add(template[pos:])


def make_cast(rng: random.Random) -> Cast:
    patient = s.person(rng)
    age = rng.randint(90, 104) if rng.random() < 0.3 else rng.randint(19, 89)
    relatives = []
    for _ in range(rng.randint(1, 2)):
        sex = rng.choice("FM")
        relation = rng.choice(s.RELATIONS_F if sex == "F" else s.RELATIONS_M)
        relatives.append((relation, s.person(rng, sex)))
    clinicians = [s.person(rng, eponym=0.1) for _ in range(3)]
    return Cast(patient, age, relatives, clinicians, rng.choice(s.CITIES))


def generate(n_notes: int = 260, seed: int = SEED) -> list[dict[str, object]]:
    """The evaluation notes: ``{"id", "text", "spans": [{"start", "end", "type"}]}``."""
    rng = random.Random(seed)
    kinds = [kind for kind, weight, _ in NOTE_KINDS for _ in range(weight)]
    templates = {kind: lines for kind, _, lines in NOTE_KINDS}
    notes: list[dict[str, object]] = []
    for i in range(n_notes):
        kind = kinds[i % len(kinds)]
        slots, note = Slots(rng, make_cast(rng)), NoteBuilder()
        for line in templates[kind]:
            optional = line.startswith("?")
            if optional and rng.random() < 0.35:
                continue
            render(line.removeprefix("?") + "\n", slots, note)
        notes.append({"id": f"{kind}-{i:03d}", "text": note.text(), "spans": note.spans})
    return notes


def dumps(notes: list[dict[str, object]]) -> str:
    return "".join(json.dumps(n, ensure_ascii=False) + "\n" for n in notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    content = dumps(generate())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        return 0 if current == content else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(content, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
