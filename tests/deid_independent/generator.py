"""The independent de-identification evaluation set: synthetic clinical notes written apart
from the detector (``clinalign.common.deid``). Nothing here is shared with it: the
templates are this module's own, names, streets, cities, phone numbers, plates and network
addresses come from Faker's en_US providers (seeded), and the few lists below (counties,
devices, eponymous clinical terms) are this module's. It covers the eighteen HIPAA Safe
Harbor categories that can occur in text (45 CFR 164.514(b)(2)(i)); full-face photographs
cannot.

Each note carries its identifier spans (type = the Safe Harbor category) and ``keep``
spans: clinical terms a de-identifier must leave alone, eponyms above all, which look like
names. The file it writes, ``tests/data/deid_independent.jsonl``, was generated once and
frozen (its SHA-256 is in ``deid_independent.sha256``, committed before any tuning
against it): regenerating must give the same bytes.

    .venv/bin/python -m tests.deid_independent.generator          # write the set
    .venv/bin/python -m tests.deid_independent.generator --check  # exit 1 if it differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from faker import Faker

OUT = Path(__file__).resolve().parents[1] / "data" / "deid_independent.jsonl"
HASH = OUT.with_suffix(".sha256")
SEED = 18_018
NOTES = 240
# The day the set was generated and frozen, and 90 years before it (what Faker made of
# "-90y" that day): dates are drawn between the two, never relative to today, so the set
# regenerates the same bytes on any later day.
FROZEN_ON = date(2026, 12, 7)
EARLIEST_DATE = date(1936, 12, 7)

COUNTIES = (
    "Kittitas County",
    "Ottertail County",
    "Bexar County",
    "Oglethorpe County",
    "Jo Daviess County",
    "St. Landry Parish",
    "Matanuska-Susitna Borough",
    "Kent County",
)
DEVICES = (
    "insulin pump",
    "implantable cardioverter-defibrillator",
    "cochlear implant",
    "spinal cord stimulator",
    "continuous glucose monitor",
    "left ventricular assist device",
)
EPONYMS = (
    "Addison's disease",
    "Cushing's syndrome",
    "Hodgkin lymphoma",
    "Parkinson's disease",
    "Crohn's disease",
    "Graves' disease",
    "Bell's palsy",
    "Raynaud's phenomenon",
    "the Epley manoeuvre",
    "a positive Murphy's sign",
    "Wernicke encephalopathy",
    "Guillain-Barre syndrome",
    "Sjogren's syndrome",
    "Hashimoto's thyroiditis",
    "a Babinski sign",
    "the Glasgow Coma Scale",
    "Kawasaki disease",
    "Lyme disease",
)
DRUGS = (
    "metoprolol 25 mg twice daily",
    "apixaban 5 mg twice daily",
    "levothyroxine 75 mcg",
    "sertraline 50 mg",
    "insulin glargine 18 units at night",
    "furosemide 40 mg",
)


@dataclass
class Note:
    """A note being written: text, identifier spans and clinical spans to keep."""

    id: str
    parts: list[str] = field(default_factory=list)
    spans: list[dict[str, object]] = field(default_factory=list)
    keep: list[dict[str, int]] = field(default_factory=list)

    def _at(self) -> int:
        return sum(len(p) for p in self.parts)

    def say(self, text: str) -> None:
        self.parts.append(text)

    def phi(self, text: str, kind: str) -> None:
        start = self._at()
        self.parts.append(text)
        self.spans.append({"start": start, "end": start + len(text), "type": kind})

    def term(self, text: str) -> None:
        start = self._at()
        self.parts.append(text)
        self.keep.append({"start": start, "end": start + len(text)})

    def record(self) -> dict[str, object]:
        return {"id": self.id, "text": "".join(self.parts), "spans": self.spans, "keep": self.keep}


def _date(fake: Faker, rng: random.Random) -> str:
    d = fake.date_between(start_date=EARLIEST_DATE, end_date=FROZEN_ON)
    return rng.choice(
        (
            d.strftime("%m/%d/%Y"),
            d.strftime("%B %d, %Y"),
            d.strftime("%d %b %Y"),
            d.strftime("%Y-%m-%d"),
            d.strftime("%b %d"),
            f"{d.month}/{d.day}",
        )
    )


def _phone(fake: Faker, rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        (f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}")
    )


def _address(fake: Faker, rng: random.Random, note: Note) -> None:
    kind = rng.random()
    if kind < 0.2:
        note.phi(f"PO Box {rng.randint(10, 99999)}", "ADDRESS")
    else:
        line = fake.street_address()
        if rng.random() < 0.4:
            line += ", " + fake.secondary_address()
        note.phi(line, "ADDRESS")
    note.say(", ")
    note.phi(fake.city(), "GEOGRAPHIC")
    note.say(", " + fake.state_abbr() + " ")
    note.phi(fake.zipcode_plus4() if rng.random() < 0.3 else fake.zipcode(), "ZIP")


def _triage(fake: Faker, rng: random.Random, note: Note) -> None:
    note.say("EMERGENCY DEPARTMENT NOTE\nName: ")
    note.phi(fake.name(), "NAME")
    note.say("   Hosp No. ")
    note.phi(f"{rng.choice('ABCHKM')}{rng.randint(1000000, 9999999)}", "MRN")
    note.say("\nSeen on ")
    note.phi(_date(fake, rng), "DATE")
    note.say(". Known ")
    note.term(rng.choice(EPONYMS))
    note.say("; takes ")
    note.term(rng.choice(DRUGS))
    note.say(".\nResides at ")
    _address(fake, rng, note)
    note.say(". Daughter ")
    note.phi(fake.first_name(), "NAME")
    note.say(" on ")
    note.phi(_phone(fake, rng), "PHONE")
    note.say(".\n")


def _discharge(fake: Faker, rng: random.Random, note: Note) -> None:
    note.say("Discharge summary for ")
    note.phi(fake.name(), "NAME")
    note.say(", aged ")
    note.phi(str(rng.randint(90, 104)), "AGE")
    note.say(", admitted ")
    note.phi(_date(fake, rng), "DATE")
    note.say(" with ")
    note.term(rng.choice(EPONYMS))
    note.say(". Fax results to ")
    note.phi(_phone(fake, rng), "FAX")
    note.say(" or email ")
    note.phi(fake.free_email(), "EMAIL")
    note.say(". Medicare beneficiary ")
    note.phi(f"{rng.randint(1, 9)}{fake.bothify('??#?-??#-??##').upper()}", "HEALTH_PLAN")
    note.say("; account ")
    note.phi(fake.bothify("ACCT-########"), "ACCOUNT")
    note.say(". Lives in ")
    note.phi(rng.choice(COUNTIES), "GEOGRAPHIC")
    note.say(".\n")


def _devices(fake: Faker, rng: random.Random, note: Note) -> None:
    device = rng.choice(DEVICES)
    note.say(f"Has an {device}" if device[0] in "aeiou" else f"Has a {device}")
    note.say(", serial ")
    note.phi(fake.bothify("??#####-###").upper(), "DEVICE")
    note.say(". Drove in; vehicle plate ")
    note.phi(fake.license_plate(), "VEHICLE")
    note.say(", VIN ")
    note.phi(fake.vin(), "VEHICLE")
    note.say(". Portal login from ")
    note.phi(fake.ipv4_public() if rng.random() < 0.7 else fake.ipv6(), "IP")
    note.say(" via ")
    note.phi(fake.url(), "URL")
    note.say(".\n")


def _identifiers(fake: Faker, rng: random.Random, note: Note) -> None:
    note.say("SSN ")
    note.phi(fake.ssn(), "SSN")
    note.say(". Prescriber ")
    note.phi("Dr. " + fake.last_name(), "NAME")
    note.say(", DEA ")
    note.phi(fake.bothify("?#######").upper(), "LICENSE")
    note.say(", state licence ")
    note.phi(fake.bothify("MD-######"), "LICENSE")
    note.say(". Death certificate ")
    note.phi(fake.bothify("####-######"), "CERTIFICATE")
    note.say(" reviewed. Fingerprint template ")
    note.phi(fake.bothify("FP-####-????").upper(), "BIOMETRIC")
    note.say(" on file. Research code ")
    note.phi(fake.bothify("??-####-??").upper(), "OTHER_ID")
    note.say(". Diagnosis: ")
    note.term(rng.choice(EPONYMS))
    note.say(".\n")


SECTIONS = (_triage, _discharge, _devices, _identifiers)


def generate(n: int = NOTES, seed: int = SEED) -> list[dict[str, object]]:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    notes = []
    for i in range(n):
        note = Note(f"independent-{i:03d}")
        for section in rng.sample(SECTIONS, k=rng.randint(2, 4)):
            section(fake, rng, note)
        notes.append(note.record())
    return notes


def render(notes: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(n, ensure_ascii=False) + "\n" for n in notes).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    data = render(generate())
    digest = hashlib.sha256(data).hexdigest()
    if args.check:
        frozen = HASH.read_text().split()[0]
        same = digest == frozen and OUT.read_bytes() == data
        print("independent set matches its frozen hash" if same else "MISMATCH")
        sys.exit(0 if same else 1)
    OUT.write_bytes(data)
    HASH.write_text(f"{digest}  {OUT.name}\n")
    print(f"{OUT}: {len(data)} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
