"""Invented people, places, numbers and clinical filler for the synthetic evaluation notes.

Everything here is made up: the names come from many naming traditions so that the
detector is not measured only on names its gazetteers list, and every number is random.
The given-name gazetteer (``data/given_names.txt``) was written before the first
evaluation and lacks many of these given names on purpose; the surname gazetteer was
written after it and shares many common surnames with ``SURNAMES``, which flatters
name recall here.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

# fmt: off
GIVEN_F = (
    "Jane", "Mary", "Linda", "Susan", "Karen", "Emily", "Sarah", "Jessica", "Ashley", "Megan",
    "Rachel", "Laura", "Helen", "Margaret", "Dorothy", "Evelyn", "Ruth", "Gloria", "Beatrice",
    "Harriet", "Agnes", "Maureen", "Siobhan", "Eilidh", "Aoife", "Niamh", "Lucia", "Ximena",
    "Guadalupe", "Rosario", "Camila", "Valentina", "Ngozi", "Chiamaka", "Adaeze", "Folasade",
    "Thandiwe", "Nomvula", "Amara", "Priya", "Meera", "Ananya", "Lakshmi", "Sunita", "Mei",
    "Yuki", "Haruka", "Ngoc", "Thanh", "Huong", "Minji", "Seo-yeon", "Fatima", "Layla",
    "Yasmin", "Noor", "Katarzyna", "Agnieszka", "Olena", "Svetlana", "Ingrid", "Astrid", "Zoë",
    "Chloé", "Renée", "Anneliese", "Marisol", "Imelda", "Tahlia", "Keisha", "Latoya",
    "Shaniqua", "Deborah", "Rosalind", "Philippa", "Henrietta", "Winifred", "Bernadette",
    "Consuelo",
)
GIVEN_M = (
    "John", "Robert", "Michael", "David", "James", "William", "Thomas", "Richard", "Charles",
    "Daniel", "Matthew", "Anthony", "Kevin", "Brian", "George", "Edward", "Harold", "Walter",
    "Arthur", "Stanley", "Clarence", "Declan", "Cormac", "Padraig", "Carlos", "Mateo",
    "Joaquín", "José", "Alejandro", "Chinedu", "Oluwaseun", "Kwame", "Kofi", "Tunde", "Emeka",
    "Sipho", "Arjun", "Sanjay", "Rohan", "Vikram", "Anil", "Hiroshi", "Kenji", "Takumi", "Wei",
    "Jun", "Minh", "Duc", "Tuan", "Omar", "Yusuf", "Tariq", "Karim", "Dmitri", "Sergei",
    "Zbigniew", "Łukasz", "Tomasz", "Lars", "Bjørn", "Henrik", "Jürgen", "Hamish", "Callum",
    "Rhys", "Gethin", "Ezekiel", "Thaddeus", "Cornelius", "Bartholomew", "Lachlan", "Tevita",
    "Sione",
)
SURNAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Thompson", "Moore", "Jackson",
    "White", "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott",
    "Green", "Baker", "Adams", "Nelson", "Carter", "Mitchell", "Roberts", "Campbell", "Okafor",
    "Okonkwo", "Adeyemi", "Oyelaran", "Mensah", "Asante", "Nkosi", "Dlamini", "Mwangi",
    "Achebe", "Nwosu", "Patel", "Sharma", "Iyer", "Raman", "Chatterjee", "Venkataraman",
    "Krishnamurthy", "Reddy", "Nair", "Banerjee", "Nguyen", "Tran", "Pham", "Le", "Hoang",
    "Takahashi", "Yamamoto", "Nakamura", "Kobayashi", "Chen", "Wang", "Liu", "Zhang", "Kim",
    "Park", "Choi", "Haddad", "Khoury", "Nasser", "Farouk", "Rahman", "Brzezinski", "Kowalczyk",
    "Wiśniewski", "Nowak", "Ivanova", "Petrov", "Kuznetsov", "Shevchenko", "Lindqvist",
    "Johansson", "Müller", "Schneider", "Fitzgerald", "O'Brien", "O'Sullivan", "McAllister",
    "MacDonald", "Gallagher", "Quigley", "Featherstonehaugh", "Abernathy", "Whitlock",
    "Pemberton", "Ashworth", "Thistlewood", "Villanueva", "Castañeda", "Echeverría",
    "Delacroix", "Fontaine", "Rossi", "Bianchi", "Esposito", "Kaur", "Singh", "Fa'amausili",
    "Tupou", "Kahananui",
)
# A few surnames that are also clinical words or eponyms: the detector must take them as
# names from context ("Dr. Parkinson") yet leave "Parkinson's disease" alone.
EPONYM_SURNAMES = ("Parkinson", "Foley", "Murphy", "Graves", "Bell", "Addison", "Cushing")

CITIES = (
    ("Springfield", "IL"), ("Dayton", "OH"), ("Fresno", "CA"), ("Tacoma", "WA"),
    ("Albany", "NY"), ("Macon", "GA"), ("Billings", "MT"), ("Provo", "UT"), ("Lowell", "MA"),
    ("Flagstaff", "AZ"), ("Pueblo", "CO"), ("Duluth", "MN"), ("Savannah", "GA"),
    ("Kalamazoo", "MI"), ("Bethesda", "MD"), ("Boise", "ID"), ("Chattanooga", "TN"),
    ("Scranton", "PA"), ("Shreveport", "LA"), ("Eau Claire", "WI"), ("Cedar Rapids", "IA"),
    ("Ann Arbor", "MI"), ("Santa Fe", "NM"), ("Baton Rouge", "LA"), ("Port St. Lucie", "FL"),
    ("Winston-Salem", "NC"), ("Coeur d'Alene", "ID"), ("Wichita Falls", "TX"),
    ("Poughkeepsie", "NY"), ("Walla Walla", "WA"), ("Hattiesburg", "MS"), ("Muskogee", "OK"),
    ("Kearney", "NE"), ("Bangor", "ME"),
)
UK_TOWNS = (
    "Leeds", "Swindon", "Dundee", "Aberystwyth", "Ipswich", "Carlisle", "Truro",
)
STREETS = (
    "Oak", "Maple", "Elm", "Cedar", "Pine", "Birch", "Willow", "Hickory", "Chestnut", "Lincoln",
    "Washington", "Jefferson", "Franklin", "Highland", "Lakeview", "Sunset", "Meadowbrook",
    "Riverside", "Old Mill", "Harbor View", "Prospect", "Magnolia", "Quarry Hill",
    "Cobblestone", "Juniper", "Tamarack", "Kingfisher", "Bramble",
)
STREET_TYPES = (
    "Street", "St", "St.", "Avenue", "Ave", "Ave.", "Road", "Rd", "Lane", "Ln", "Drive", "Dr",
    "Boulevard", "Blvd", "Court", "Ct", "Way", "Place", "Pl", "Terrace", "Circle", "Parkway",
    "Close", "Crescent",
)
UNITS = (
    "Apt 3B", "Apt. 12", "Unit 7", "Suite 210", "#4C", "Apartment 2F", "Flat 5",
)
EMAIL_DOMAINS = (
    "example.com", "mailbox.example.org", "inbox.example.net", "clinic-mail.example",
    "gmail.example.com", "patients.example.org", "riverside-health.example.org",
)
PORTAL_HOSTS = (
    "portal.riverside-health.example.org", "mychart.northgate.example.com",
    "www.myhealthrecord.example.net", "pacs.stmercy.example.org", "carelink.example.com",
)
HOSPITALS = (
    "Riverside General Hospital", "Northgate Medical Center", "Lakeshore Community Hospital",
    "the university hospital", "Mercy Valley Clinic", "Harborview Rehabilitation Unit",
)

DRUGS = (
    "metformin 500 mg twice daily", "lisinopril 10 mg daily", "atorvastatin 40 mg nightly",
    "Warfarin 5 mg daily", "apixaban 5 mg BID", "Eliquis 2.5 mg BID", "Lasix 40 mg IV",
    "furosemide 20 mg PO daily", "Keppra 500 mg BID", "Coumadin per INR",
    "amoxicillin-clavulanate 875 mg q12h", "ceftriaxone 1 g IV q24h",
    "insulin glargine 18 units at bedtime", "Humalog sliding scale", "Ozempic 0.5 mg weekly",
    "Synthroid 75 mcg daily", "Zoloft 50 mg daily", "Norvasc 5 mg daily", "Plavix 75 mg daily",
    "aspirin 81 mg daily", "prednisone 40 mg for 5 days", "Xarelto 20 mg with dinner",
    "Januvia 100 mg daily", "Lipitor 20 mg", "albuterol 2 puffs q4h PRN",
    "tiotropium 18 mcg inhaled daily", "Allegra 180 mg daily", "Valium 5 mg PRN",
    "morphine 2 mg IV q4h PRN", "ondansetron 4 mg q8h PRN", "Humira 40 mg every other week",
    "vancomycin 1.25 g IV q12h", "Tylenol 650 mg q6h", "Bactrim DS one tab BID for 3 days",
    "magnesium oxide 400 mg daily",
)
PROBLEMS = (
    "type 2 diabetes mellitus", "hypertension", "atrial fibrillation", "COPD",
    "heart failure with reduced ejection fraction", "CKD stage 3a", "hypothyroidism",
    "Parkinson's disease", "Crohn's disease", "Graves' disease", "Hashimoto's thyroiditis",
    "Bell's palsy", "Addison's disease", "Cushing's syndrome", "Hodgkin lymphoma",
    "Alzheimer's dementia", "Guillain-Barré syndrome", "Lyme disease", "osteoarthritis",
    "major depressive disorder", "community-acquired pneumonia", "cellulitis of the left leg",
    "NSTEMI", "ischemic stroke", "GERD", "obstructive sleep apnea", "gout",
)
# Sentences of pure clinical content: hard negatives that must survive untouched.
CLINICAL = (
    "BP 132/84, HR 88, RR 18, T 37.8 C, SpO2 96% on room air.",
    "Vitals stable: BP 118/76, pulse 72, afebrile.", "HbA1c 7.2%, up from 6.8% last year.",
    "Labs: Na 138, K 4.1, Cr 1.2, BUN 22, glucose 164, WBC 11.3, Hgb 10.9, PLT 245.",
    "INR 2.4 on Warfarin; target range 2-3.",
    "Troponin <0.01 x2, ECG with no acute ST changes.",
    "eGFR 54 mL/min/1.73m2, stable compared with 2019.",
    "Pain 7/10 at rest, 9/10 with movement.",
    "Strength 5/5 in all extremities; 2/6 systolic murmur at the left sternal border.",
    "Take 1/2 tablet if dizzy.", "Symptoms for 3 days, worse over the last 24 hours.",
    "Former smoker, 20 pack-years, quit in 2015.",
    "Diagnosed with diabetes in 2009 and started insulin in 2018.",
    "Negative Murphy's sign; positive Babinski on the right.",
    "Foley catheter removed on day 2; voiding without difficulty.",
    "GCS 15, NIHSS 4, Wells score 1.", "Holter monitor for 48 hours showed paroxysmal AF.",
    "Glasgow Coma Scale 14 on arrival.", "Continue current regimen and recheck BMP in 1 week.",
    "ICD-10 E11.9, I10; CPT 99214.", "Weight 82.4 kg, BMI 29.1, down 3 kg in 6 months.",
    "Chest X-ray: no consolidation, no effusion.", "Mild edema 1+ bilaterally to mid-shin.",
    "Echo: EF 35%, moderate MR, RVSP 42 mmHg.",
    "Plan: follow up in 2 weeks, sooner if fever above 38.5 C.",
    "Given 1 L NS bolus and 4 mg ondansetron IV at 14:30.",
    "A1c goal under 7% discussed; diet and exercise counselling given.",
    "Allergies: penicillin (rash), sulfa (hives).",
    "Colonoscopy in 2021 was normal; repeat in 10 years.",
    "Tdap given in 2020; influenza vaccine declined.", "Oxygen titrated to 2 L nasal cannula.",
    "Ambulating 150 feet with a walker, PT to follow.",
    "CT head without contrast negative for bleed.",
    "Urine culture >100,000 CFU E. coli, sensitive to nitrofurantoin.",
    "Reports 2-3 episodes of emesis daily for the past week.",
    "Sodium trended 128 -> 131 -> 134 over 48 hours.",
    "Reference range 3.5-5.0 mmol/L; TSH 2.35 mIU/L.",
    "Dispensed as NDC 0002-8215-01, lot expiry 2026.", "Moved to Room 412, bed 2, at 0230.",
    "Epinephrine 1:1000 0.3 mL IM given at 1430h.",
    "Apgar 8 and 9; Mallampati II; Gleason 3+4=7.",
    "Whipple procedure in 2017; Roux-en-Y in 2012.", "Staged T2N0M0, stage IIA, ECOG 1.",
    "pH 7.35, PaO2 85, PaCO2 41 on 40% FiO2.", "Visual acuity 20/40 OU.",
    "Ejection fraction improved from 30% to 45% over 18 months.",
    "Kernig and Brudzinski signs negative.", "Continue Eliquis; hold Lasix if SBP under 100.",
    "Warfarin dose adjusted per Coumadin clinic protocol.",
    "Follow-up with Cardiology and Nephrology within 4 weeks.",
    "Screened with PHQ-9 (score 11) and GAD-7 (score 8).",
    "Covid PCR negative x2; MRSA nares swab pending.",
    "He was 89 years old at his last admission in 2023.",
    "Platelets 150-400 x10^9/L, today 98.",
)
RELATIONS_F = ("daughter", "wife", "mother", "sister", "niece", "granddaughter", "partner")
RELATIONS_M = ("son", "husband", "father", "brother", "nephew", "grandson", "partner")
# Cue phrases written before an identifier, as clinicians and forms write them.
MRN_CUES = (
    "MRN: ", "MRN ", "MRN# ", "MR#: ", "Med Rec #", "Medical record number ", "Med. rec. no. ",
    "Hospital number: ", "Patient ID: ", "Chart #",
)
MEMBER_CUES = (
    "member ID ", "Member ID: ", "policy # ", "Policy number ", "subscriber ID ",
    "Medicaid ID ", "Medicare ID ", "insurance ID: ", "group no. ", "plan ID ",
)
ACCOUNT_CUES = (
    "Acct #", "Account number ", "acct no. ", "Billing account: ", "Encounter #",
    "Visit number ",
)
LICENCE_CUES = (
    "NPI ", "NPI: ", "DEA # ", "DEA ", "License # ", "licence no. ", "State license ", "Lic. #",
    "driver's license ",
)
RX_CUES = (
    "Rx #", "Rx# ", "prescription number ", "Accession #", "Accession no. ", "Specimen ID ",
)
SERIAL_CUES = (
    "serial number ", "Serial #: ", "SN ", "S/N: ", "device ID ", "Device serial ", "UDI ",
)
# fmt: on


@dataclass(frozen=True)
class Person:
    """An invented person; ``sex`` picks pronouns and titles."""

    first: str
    last: str
    sex: str  # "F" or "M"

    @property
    def full(self) -> str:
        return f"{self.first} {self.last}"


def person(rng: random.Random, sex: str | None = None, eponym: float = 0.03) -> Person:
    sex = sex or rng.choice("FM")
    first = rng.choice(GIVEN_F if sex == "F" else GIVEN_M)
    last = rng.choice(EPONYM_SURNAMES) if rng.random() < eponym else rng.choice(SURNAMES)
    return Person(first, last, sex)


def digits(rng: random.Random, n: int, first_nonzero: bool = False) -> str:
    head = str(rng.randint(1, 9)) if first_nonzero else str(rng.randint(0, 9))
    return head + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(n))


def random_date(rng: random.Random, start_year: int = 2019, end_year: int = 2025) -> dt.date:
    start = dt.date(start_year, 1, 1).toordinal()
    end = dt.date(end_year, 12, 31).toordinal()
    return dt.date.fromordinal(rng.randint(start, end))


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def fmt_date(rng: random.Random, d: dt.date, with_year: bool = True) -> str:
    """One of the many ways clinicians write a date."""
    month, mon = d.strftime("%B"), d.strftime("%b")
    if not with_year:
        return rng.choice(
            (
                f"{month} {d.day}",
                f"{month} {ordinal(d.day)}",
                f"{mon} {d.day}",
                f"{d.day} {month}",
                f"the {ordinal(d.day)} of {month}",
                f"{d.month}/{d.day}",
            )
        )
    yy = d.year % 100
    return rng.choice(
        (
            f"{d.month:02d}/{d.day:02d}/{d.year}",
            f"{d.month}/{d.day}/{d.year}",
            f"{d.month}/{d.day}/{yy:02d}",
            d.isoformat(),
            f"{d.day} {mon} {d.year}",
            f"{d.day} {month} {d.year}",
            f"{month} {d.day}, {d.year}",
            f"{month} {ordinal(d.day)}, {d.year}",
            f"{mon} {d.day}, {d.year}",
            f"{mon}. {d.day}, {d.year}",
            f"{d.day:02d}-{mon}-{d.year}",
            f"{d.day:02d}-{mon.upper()}-{d.year}",
            f"{d.day:02d}.{d.month:02d}.{d.year}",
            f"{d.year}/{d.month:02d}/{d.day:02d}",
            f"{ordinal(d.day)} {month} {d.year}",
            f"{month} {d.year}",
            f"{d.month:02d}-{d.day:02d}-{d.year}",
        )
    )


def phone(rng: random.Random) -> str:
    area, exch, line = digits(rng, 3, True), digits(rng, 3, True), digits(rng, 4)
    return rng.choice(
        (
            f"({area}) {exch}-{line}",
            f"({area}){exch}-{line}",
            f"{area}-{exch}-{line}",
            f"{area}.{exch}.{line}",
            f"{area} {exch} {line}",
            f"+1 {area} {exch} {line}",
            f"1-{area}-{exch}-{line}",
            f"+1 ({area}) {exch}-{line}",
            f"+44 20 {digits(rng, 4, True)} {digits(rng, 4)}",
            f"07{digits(rng, 3)} {digits(rng, 6)}",
        )
    )


def ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    body = f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    return rng.choice((body, body.replace("-", " "), body.replace("-", "")))


def mrn(rng: random.Random) -> str:
    return rng.choice(
        (
            digits(rng, 7, True),
            "00" + digits(rng, 6, True),
            digits(rng, 8, True),
            digits(rng, 10, True),
            f"{digits(rng, 2, True)}-{digits(rng, 3)}-{digits(rng, 3)}",
            f"MR{digits(rng, 7)}",
            f"{letters(rng, 1)}{digits(rng, 7)}",
            f"{digits(rng, 3, True)} {digits(rng, 3)} {digits(rng, 4)}",
        )
    )


def member_id(rng: random.Random) -> str:
    return rng.choice(
        (
            f"{letters(rng, 3)}{digits(rng, 9)}",
            f"W{digits(rng, 9)}",
            f"{digits(rng, 8, True)}{letters(rng, 1)}",
            f"{digits(rng, 1, True)}{letters(rng, 2)}{digits(rng, 1)}-{letters(rng, 2)}"
            f"{digits(rng, 1)}-{letters(rng, 2)}{digits(rng, 2)}",
            digits(rng, 11, True),
            f"{letters(rng, 2)}-{digits(rng, 6)}-{digits(rng, 2)}",
        )
    )


def account(rng: random.Random) -> str:
    return rng.choice(
        (digits(rng, 10), digits(rng, 12, True), f"{digits(rng, 4)}-{digits(rng, 6)}")
    )


def licence(rng: random.Random) -> str:
    return rng.choice(
        (
            f"{letters(rng, 2)}{digits(rng, 7)}",  # DEA-like
            digits(rng, 10, True),  # NPI-like
            f"MD{digits(rng, 6)}",
            f"RN{digits(rng, 7)}",
            f"{letters(rng, 1)}{digits(rng, 7)}",
            f"{letters(rng, 1)}{digits(rng, 3)}-{digits(rng, 4)}-{digits(rng, 4)}",
        )
    )


def serial(rng: random.Random) -> str:
    return rng.choice(
        (
            f"{letters(rng, 3)}{digits(rng, 6)}{letters(rng, 1)}",
            f"SN-{digits(rng, 5)}-{letters(rng, 2)}",
            f"{letters(rng, 1)}{digits(rng, 8)}",
            f"{letters(rng, 3)}{digits(rng, 1)}-{digits(rng, 4)}-{digits(rng, 4)}",
            f"{digits(rng, 4, True)}{letters(rng, 4)}{digits(rng, 2)}",
        )
    )


def email(rng: random.Random, p: Person) -> str:
    local = rng.choice(
        (
            f"{p.first}.{p.last}",
            f"{p.first[0]}{p.last}{rng.randint(1, 99)}",
            f"{p.last}_{p.first[0]}",
            f"{p.first}{rng.randint(1950, 2005)}",
        )
    )
    local = local.lower().replace("'", "").replace(" ", "")
    local = local.encode("ascii", "ignore").decode() or "patient"
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


def url(rng: random.Random) -> str:
    host = rng.choice(PORTAL_HOSTS)
    path = rng.choice(
        (f"/patient/{digits(rng, 6)}", f"/messages?id={digits(rng, 8)}", "/login", "")
    )
    scheme = "" if host.startswith("www.") and rng.random() < 0.5 else "https://"
    return f"{scheme}{host}{path}"


def ipv4(rng: random.Random) -> str:
    first = rng.choice((10, 172, 192, rng.randint(11, 223)))
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def street(rng: random.Random) -> str:
    core = f"{rng.randint(1, 9899)} {rng.choice(STREETS)} {rng.choice(STREET_TYPES)}"
    if rng.random() < 0.1:
        return f"PO Box {rng.randint(10, 9999)}"
    return f"{core}, {rng.choice(UNITS)}" if rng.random() < 0.25 else core


def zip_code(rng: random.Random) -> str:
    z = digits(rng, 5)
    return f"{z}-{digits(rng, 4)}" if rng.random() < 0.2 else z


def uk_postcode(rng: random.Random) -> str:
    return f"{letters(rng, 2)}{rng.randint(1, 20)} {rng.randint(1, 9)}{letters(rng, 2)}"
