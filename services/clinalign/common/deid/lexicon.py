"""Regex building blocks and cue words shared by the identifier rules (``patterns``).

Word lists are kept compact by hand (``fmt: off``): one item per line would bury them.
"""

from __future__ import annotations

from dataclasses import dataclass

SP = r"[ \t]"  # identifiers never run across a line break

# -- dates -------------------------------------------------------------------------------
# fmt: off
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
MONTH_ABBREVIATIONS = ("Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct",
                       "Nov", "Dec")
# fmt: on
_MONTH_WORDS = sorted(
    {w for m in MONTHS + MONTH_ABBREVIATIONS for w in (m, m.upper())}, key=len, reverse=True
)
MONTH = rf"(?:{'|'.join(_MONTH_WORDS)})\b\.?"  # "Mar", "Mar.", "MARCH"; never "may"
FULL_MONTH = rf"(?:{'|'.join(MONTHS)})\b"
MONTH_FIRST = "ADFJMNOS"
DAY = r"(?:3[01]|[12]\d|0?[1-9])"
ORD = r"(?:st|nd|rd|th)"
YEAR = r"(?:1[89]\d\d|20\d\d)"

# -- places ------------------------------------------------------------------------------
# fmt: off
STATES = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN",
    "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH",
    "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT",
    "VT", "VA", "WA", "WV", "WI", "WY", "Alabama", "Alaska", "Arizona", "Arkansas",
    "California", "Colorado", "Connecticut", "Delaware", "Florida", "Georgia", "Hawaii",
    "Idaho", "Illinois", "Indiana", "Iowa", "Kansas", "Kentucky", "Louisiana", "Maine",
    "Maryland", "Massachusetts", "Michigan", "Minnesota", "Mississippi", "Missouri", "Montana",
    "Nebraska", "Nevada", "Ohio", "Oklahoma", "Oregon", "Pennsylvania", "Tennessee", "Texas",
    "Utah", "Vermont", "Virginia", "Washington", "Wisconsin", "Wyoming",
    # USPS codes of the territories, freely associated states and military post offices
    "AS", "GU", "MP", "PR", "VI", "FM", "MH", "PW", "AA", "AE", "AP",
)
# The street suffixes of USPS Publication 28, Appendix C1 (primary names, and the common
# abbreviations), with the British ones clinical letters use. Left out: abbreviations that
# are also clinical words or units ("Via", "Ml", "Dl", "Ft", "Pt", "Is", "Ext"), where
# "10 Units Via" would read as a street.
STREET_TYPES = (
    "Alley", "Aly", "Annex", "Anx", "Arcade", "Arc", "Avenue", "Ave", "Bayou", "Byu", "Beach",
    "Bch", "Bend", "Bnd", "Bluff", "Bluffs", "Blf", "Bottom", "Btm", "Boulevard", "Blvd",
    "Branch", "Bridge", "Brg", "Brook", "Brooks", "Brk", "Burg", "Burgs", "Bypass", "Byp",
    "Camp", "Canyon", "Cyn", "Cape", "Cpe", "Causeway", "Cswy", "Center", "Centers", "Ctr",
    "Circle", "Circles", "Cir", "Cliff", "Cliffs", "Clf", "Club", "Clb", "Common", "Commons",
    "Corner", "Corners", "Cor", "Course", "Crse", "Court", "Courts", "Ct", "Cove", "Coves",
    "Cv", "Creek", "Crk", "Crescent", "Cres", "Crest", "Crossing", "Xing", "Crossroad",
    "Crossroads", "Curve", "Dale", "Dam", "Divide", "Drive", "Drives", "Dr", "Estate",
    "Estates", "Expressway", "Expy", "Extension", "Extensions", "Fall", "Falls", "Fls",
    "Ferry", "Fry", "Field", "Fields", "Fld", "Flat", "Flats", "Flt", "Ford", "Fords", "Frd",
    "Forest", "Frst", "Forge", "Forges", "Frg", "Fork", "Forks", "Frk", "Fort", "Freeway",
    "Fwy", "Garden", "Gardens", "Gdn", "Gateway", "Gtwy", "Glen", "Glens", "Gln", "Green",
    "Greens", "Grn", "Grove", "Groves", "Grv", "Harbor", "Harbors", "Hbr", "Haven", "Hvn",
    "Heights", "Hts", "Highway", "Hwy", "Hill", "Hills", "Hollow", "Holw", "Inlet", "Inlt",
    "Island", "Islands", "Isle", "Junction", "Junctions", "Jct", "Key", "Keys", "Knoll",
    "Knolls", "Knl", "Lake", "Lakes", "Lk", "Land", "Landing", "Lndg", "Lane", "Ln", "Light",
    "Lights", "Lgt", "Loaf", "Lock", "Locks", "Lck", "Lodge", "Ldg", "Loop", "Mall", "Manor",
    "Manors", "Mnr", "Meadow", "Meadows", "Mdw", "Mews", "Mill", "Mills", "Mission", "Msn",
    "Motorway", "Mtwy", "Mount", "Mt", "Mountain", "Mountains", "Mtn", "Neck", "Nck",
    "Orchard", "Orch", "Oval", "Overpass", "Opas", "Park", "Parks", "Parkway", "Parkways",
    "Pkwy", "Pass", "Passage", "Psge", "Path", "Pike", "Pine", "Pines", "Pne", "Place", "Pl",
    "Plain", "Plains", "Pln", "Plaza", "Plz", "Point", "Points", "Port", "Ports", "Prt",
    "Prairie", "Radial", "Radl", "Ramp", "Ranch", "Rnch", "Rapid", "Rapids", "Rpd", "Rest",
    "Rst", "Ridge", "Ridges", "Rdg", "River", "Riv", "Road", "Roads", "Rd", "Route", "Rte",
    "Row", "Rue", "Run", "Shoal", "Shoals", "Shl", "Shore", "Shores", "Shr", "Skyway", "Skwy",
    "Spring", "Springs", "Spg", "Spur", "Spurs", "Square", "Squares", "Sq", "Station",
    "Stravenue", "Stra", "Stream", "Strm", "Street", "Streets", "St", "Summit", "Smt",
    "Terrace", "Ter", "Throughway", "Trwy", "Trace", "Trce", "Track", "Trak", "Trafficway",
    "Trfy", "Trail", "Trl", "Trailer", "Trlr", "Tunnel", "Tunl", "Turnpike", "Tpke",
    "Underpass", "Upas", "Union", "Unions", "Valley", "Valleys", "Vly", "Viaduct", "View",
    "Views", "Vw", "Village", "Villages", "Vlg", "Ville", "Vista", "Walk", "Walks", "Wall",
    "Way", "Ways", "Well", "Wells", "Close", "Mews",
)
# fmt: on
STATE = rf"(?:{'|'.join((*STATES, 'New York', 'New Jersey'))})\b"
# Two-letter codes that are also credentials or words ("Emily Bell, MD", "Aetna, ID"):
# without a ZIP after them the city reading scores below the default threshold.
AMBIGUOUS_STATES = frozenset({"MD", "PA", "DO", "ID", "OR", "IN", "ME", "OK"})
ZIP5 = r"\d{5}(?:-\d{4})?"
UK_POSTCODE = r"[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}"
# "St." first: alternation takes the first branch that fits, and "St" alone would end the
# place at "Port St" instead of "Port St. Lucie".
PLACE_WORD = r"(?:St\.|[A-Z][a-z]+(?:-[A-Z][a-z]+)?|d'[A-Z][a-z]+)"
PLACE = rf"{PLACE_WORD}(?:{SP}{PLACE_WORD}){{0,2}}"
# Capitalised words after "transferred to" that are wards and services, not places.
NOT_PLACES = (
    r"(?:Home|Hospice|Rehab\w*|Skilled|Nursing|ICU|Cardiology|Neurology|Oncology|Surgery|"
    r"Medicine|Respite|Assisted|Long|Short|Ward|Unit|Theatre|Theater|The|Our|His|Her)\b"
)
INSTITUTION = r"General|Hospital|Medical|Community|Clinic|Health|Memorial|Regional|Center"
STREET = (
    rf"\d{{1,5}}[A-Za-z]?{SP}+(?:(?:[A-Z][a-z]+|\d+{ORD}|[NSEW]\.?){SP}+){{1,3}}"
    rf"(?:{'|'.join(STREET_TYPES)})\b\.?"
    rf"(?:,?{SP}*(?:(?:Apt|Apartment|Unit|Suite|Ste|Flat|Floor|Fl|Room|Rm|Bldg|Building)"
    rf"\b\.?|\#){SP}*[A-Za-z0-9-]*\d[A-Za-z0-9-]*){{0,2}}"
    rf"|\bP\.?{SP}?O\.?{SP}+Box{SP}+\d+"
)


# -- identifiers after a cue ----------------------------------------------------------------
def id_value(min_digits: int) -> str:
    """The identifier after a cue: letters and digits with a digit near the start, in
    hyphenated or space-separated groups ("10-912-757", "1EG4-TE5-MK73", "523 221 0934").

    The digit count is a look-ahead, not a validator, so a cue followed by something else
    ("encounter 18th April", "visit 3 days") fails without consuming what follows. The
    value is atomic, so a failed check cannot backtrack to a shorter value ("0" of
    "03/14/24"), and it may not run into a date or a word.
    """
    digits = r"[\dA-Z -]*?\d" * min_digits
    return (
        rf"(?=[A-Z-]{{0,5}}\d)(?={digits})(?>(?:[A-Z]{{1,4}}-?)?\d[\dA-Z]*(?:-[\dA-Z]+)*"
        r"(?:[ ]\d{3,}(?:-[\dA-Z]+)*)*)(?![/.:]\d|[a-z])"
    )


CUE_SEP = rf"{SP}*(?i:#|:|No\.?|num(?:ber)?\.?)?{SP}*[:#]?{SP}*"


def initials(*alternatives: str) -> str:
    """Both cases of the first letter of each alternative, for a rule's ``first`` class;
    each alternative must start with a literal letter."""
    assert all(a[:1].isalpha() for a in alternatives), alternatives
    return "".join(sorted({c for a in alternatives for c in (a[0].lower(), a[0].upper())}))


@dataclass(frozen=True)
class Cue:
    """Case-insensitive cue words before an identifier, and the letters they start with."""

    regex: str
    first: str


def cue(*alternatives: str) -> Cue:
    words = "|".join(alternatives)
    return Cue(rf"\b(?i:{words})(?![A-Za-z]){CUE_SEP}", initials(*alternatives))


# fmt: off
MRN_CUES = cue(
    "MRN", r"MR\s?#", r"MR\s?No\.?", r"Med(?:ical|\.)?\s+rec(?:ord|\.)?", r"Medical\s+record",
    r"Hosp(?:ital|\.)?\s+(?:number|no\.?|ID)", r"Patient\s+ID", r"Pt\.?\s+ID", "Chart",
    r"Unit\s+(?:number|no\.?)", r"NHS\s+(?:number|no\.?)", r"Case\s+(?:number|no\.?)",
)
ACCOUNT_CUES = cue(
    r"member(?:\s+ID)?", r"subscriber(?:\s+ID)?", r"beneficiary(?:\s+ID)?", "policy",
    r"Medicaid(?:\s+ID)?", r"Medicare(?:\s+(?:ID|MBI))?", "MBI", "HICN", r"insurance(?:\s+ID)?",
    "group", r"health\s+plan(?:\s+ID)?", r"plan(?:\s+ID)?", r"billing\s+account", "account",
    r"acct\.?", "encounter", "visit", "claim",
)
LICENSE_CUES = cue(
    "NPI", "DEA", r"state\s+licen[cs]e", r"driver'?s\s+licen[cs]e", r"medical\s+licen[cs]e",
    r"licen[cs]e", r"lic\.", "DL", "certificate", r"cert\.",
)
DEVICE_CUES = cue(
    r"device\s+serial", "serial", "S/N", "SN", r"device(?:\s+ID)?", "UDI", "IMEI", "lot",
    "model/serial",
)
SSN_CUES = cue("SSN", "SS#", r"social\s+security(?:\s+number)?")
ZIP_CUES = cue(r"zip(?:\s+code)?", r"post(?:al)?\s*code")
VEHICLE_CUES = cue(
    "plate", r"licen[cs]e\s+plate", r"number\s+plate", r"registration\s+plate",
    r"tag(?:\s+number)?", "VIN",
    r"vehicle(?:\s+(?:ID|identification\s+number|registration))?",
    r"registration(?:\s+number)?",
)
_BIO_WHAT = r"(?:\s+(?:template|scan|image|record|enrol(?:l)?ment|ID|identifier))?"
BIOMETRIC_CUES = cue(*(
    w + _BIO_WHAT
    for w in ("fingerprint", r"finger\s+print", "voiceprint", r"voice\s+print", "retinal?",
              "iris", r"palm\s*print", "facial", "face", "biometric")
))
# Codes of research and registries that name a person: study and subject identifiers.
_CODE_WHAT = r"\s+(?:code|ID|identifier|number|no\.?)"
CODE_CUES = cue(
    *(w + _CODE_WHAT for w in ("research", "study", "trial", "subject", "participant",
                                "enrol(?:l)?ment", "registry", "biobank", "sample")),
    "identifier",
)

# Lower-case words before a date without a year, a month alone, or a place.
DATE_CUES = ("on", "since", "from", "until", "till", "by", "before", "after", "dated", "due",
             "appt", "appointment", "scheduled", "seen", "admitted", "discharged", "DOS",
             "date", "visit")
MONTH_CUES = ("in", "since", "during", "until", "from", "early", "late", "mid", "last", "next",
              "of")
LOCATIVE_VERBS = ("lives", "living", "resides", "residing", "moved", "moving", "relocated",
                  "relocating", "born", "raised", "discharged", "discharge", "transferred",
                  "travelled", "traveled", "drove", "flew", "home", "back")
LOCATIVE_PLACES = ("ED", "hospital", "clinic", "emergency department")
CITY_CUES = ("in", "from", "to", "near", "at", "of", "visiting", "lives", "resides", "born")
# fmt: on


def first_letters(words: tuple[str, ...]) -> str:
    """The first letters of case-sensitive cue words."""
    return "".join(sorted({w[0] for w in words}))
