"""The regexes of person-name detection: what a name looks like and what points at one.

Unicode right quotes (U+2019) are written as ``\\u2019`` so no ambiguous character hides
in a pattern.
"""

from __future__ import annotations

import re

from clinalign.common.deid.lexicon import initials

UP = "A-ZÀ-ÖØ-ÞĀ-ž"  # Latin-1 and Latin Extended-A capitals (the latter range is mixed)
LO = "a-zß-öø-ÿĀ-ž"
SP = r"[ \t]"
_Q = "'\u2019"  # apostrophe and right single quote
# A name word: "Okafor", "O'Brien", "McAllister", "Seo-yeon", "Fa'amausili"; not "Smith's".
TOKEN = rf"(?:[{UP}][{_Q}])?(?:Ma?c)?[{UP}][{LO}]+(?:[-{_Q}](?:[{UP}][{LO}]+|[{LO}]{{2,}}))*"
TITLES = r"Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Professor|Nurse|Sister|Rev|Fr|Dra|Sra|Sr|Capt"
NOT_TITLE = rf"(?!(?:{TITLES})\b)"
INITIAL = rf"[{UP}]\.{SP}*"
_PARTICLE = rf"(?:van|von|de|del|della|da|di|du|le|la|bin|al|ter|van der){SP}+"
# One to three name words: "Amara Okafor", "A. Okafor", "Ngoc B. Krishnamurthy".
NAME_SEQ = (
    rf"{NOT_TITLE}(?:{INITIAL})?{TOKEN}"
    rf"(?:{SP}+(?:{INITIAL})?(?:{_PARTICLE})?{NOT_TITLE}{TOKEN}){{0,2}}"
)
TWO_WORDS = rf"{NOT_TITLE}(?:{INITIAL})?{TOKEN}(?:{SP}+(?:{INITIAL})?{NOT_TITLE}{TOKEN}){{1,2}}"
# "SMITH, Jane", "Smith, Jane A.", "WILSON, KEVIN C" after a field label.
_CAPS = rf"[{UP}]{{2,}}(?:[-{_Q}][{UP}]{{2,}})*"
LAST_FIRST = rf"(?:{_CAPS}|{TOKEN}),{SP}*(?:{TOKEN}|{_CAPS})(?:{SP}+[{UP}]\b\.?)?"

# fmt: off
CREDENTIALS = ("MD", "DO", "RN", "NP", "PA-C", "PA", "FRCP", "FRCS", "FRACP", "MBBS", "MBChB",
               "PhD", "LPN", "CNA", "DNP", "APRN", "FNP", "BSN", "PharmD", "MRCP", "DPM", "CNM",
               "CRNA", "LCSW", "MSW")
RELATIONS = ("son", "daughter", "wife", "husband", "mother", "father", "sister", "brother",
             "partner", "spouse", "niece", "nephew", "grandson", "granddaughter", "grandmother",
             "grandfather", "aunt", "uncle", "cousin", "friend", r"neighbou?r", "carer",
             "caregiver", "guardian", r"fianc[eé]e?", "mom", "mum", "dad", "stepson",
             "stepdaughter", "boyfriend", "girlfriend", "son-in-law", "daughter-in-law")
POSSESSIVES = ("her", "his", "their", "my", "your", r"the\s+patient's", "pt's")
# Verbs of reporting follow a person, not a drug: "Ximena reports", "Tom agrees".
SPEECH = ("reports", "reported", "says", "said", "states", "stated", "agrees", "agreed",
          "denies", "denied", "asks", "asked", "requests", "requested", "notes", "noted",
          "complains", "complained", "endorses", "endorsed", "wants", "wishes", "understands",
          "prefers", "declines", "declined", "confirms", "confirmed", "explains", "explained",
          "worries", "called", "phoned", "visited", "visits")
# Field labels point at a name only with a colon ("Patient: …", not "Patient Education");
# weak cues only at a two-word name ("regarding Sipho Wang", not "regarding Eliquis
# dosing"); the other labels at any name.
_ROLE = r"(?:\s+(?:physician|provider|doctor|clinician))?"
FIELD_LABELS = (r"patient(?:\s+name)?", "pt", "name", "caller", "attending" + _ROLE, "PCP", "GP",
                "contact", r"next\s+of\s+kin", "NOK", "referring" + _ROLE, "ordering" + _ROLE,
                "treating" + _ROLE, "physician", "provider", "surgeon", "radiologist", "nurse",
                "author", "from", "to")
WEAK_LABELS = ("re", "regarding", "called", r"for\s+patient", "about")
LABELS = (r"referr(?:ed|ing)\s+by", r"requested\s+by", r"electronically\s+signed(?:\s+by)?",
          r"signed(?:\s+by)?", r"seen\s+by", r"dictated\s+by", r"reviewed\s+by",
          r"examined\s+by", r"discussed\s+with", r"spoken?\s+(?:with|to)", r"routed\s+to",
          r"message\s+(?:to|from)", r"reply\s+from", "cc", "attn", "c/o", r"care\s+of", "dear",
          "hi", "hello", "thanks", r"thank\s+you", "regards", "sincerely", "best", r"this\s+is",
          r"my\s+name\s+is", r"visited\s+by", r"accompanied\s+by")
# Words after a name that make it an eponym: "Parkinson's disease", "Foley catheter".
EPONYM_HEADS = ("disease", "syndrome", "sign", "palsy", "thyroiditis", "lymphoma", "dementia",
                "catheter", "monitor", "scale", "score", "criteria", "test", "maneuver",
                "manoeuvre", "reflex", "phenomenon", "triad", "ulcer", "fracture", "procedure",
                "operation", "tube", "classification", "equation", "formula", "node", "shunt",
                "disorder", "law", "rule", "position", "method", "stain", "cell", "cyst",
                "hernia", "contracture", "coma")
# fmt: on


def _any(words: tuple[str, ...]) -> str:
    return "|".join(words)


def build_cues(guarded: bool = True) -> re.Pattern[str]:
    """One regex for every cue; the group that matched says which kind it was.

    Each alternative is guarded by a look-ahead on the letters it can start with: ``re``
    tries alternatives one by one at every position, and most positions fail the guard.
    ``guarded=False`` builds the reference the tests compare with.
    """

    def guard(first: str) -> str:
        return f"(?=[{first}])" if guarded else ""

    return re.compile(
        rf"{guard('DMPNSRFC')}(?<![A-Za-z])(?:{TITLES}|RN|NP|PA)\.?{SP}+(?P<t>{NAME_SEQ})"
        rf"|{guard(initials(*FIELD_LABELS))}\b(?i:{_any(FIELD_LABELS)}){SP}*[:#]{SP}*"
        rf"(?P<f>{LAST_FIRST}|{NAME_SEQ})"
        rf"|{guard('Pp')}\b(?i:patient|pt){SP}+(?P<i>{TOKEN}{SP}+[{UP}]\.{SP}*{TOKEN})"
        rf"|{guard(initials(*LABELS))}\b(?i:{_any(LABELS)})[:,]?{SP}+"
        rf"(?P<l>{LAST_FIRST}|{NAME_SEQ})"
        rf"|{guard(initials(*WEAK_LABELS))}\b(?i:{_any(WEAK_LABELS)})[:,]?{SP}+(?P<w>{TWO_WORDS})"
        rf"|{guard(initials(*POSSESSIVES, *RELATIONS))}"
        rf"\b(?i:(?:{_any(POSSESSIVES)}){SP}+)?(?i:{_any(RELATIONS)})"
        rf"[,:]?{SP}*\(?{SP}*(?P<r>{NAME_SEQ})"
        rf"|{guard(UP)}(?:(?P<c>{NAME_SEQ})(?=,?{SP}*\(?(?:{_any(CREDENTIALS)})\b)"
        rf"|(?P<v>{NAME_SEQ})(?={SP}+(?:{_any(SPEECH)})\b))"
    )


CUES = build_cues()
WORD = re.compile(TOKEN)
# A surname right after a listed given name: "Sarah Connor", "Sarah J. Connor".
NEXT_WORD = re.compile(rf"{SP}+(?:{INITIAL})?({NOT_TITLE}{TOKEN})")
EPONYM_AFTER = re.compile(rf"(?:[{_Q}]s|[{_Q}])?[ \t-]+(?i:{_any(EPONYM_HEADS)})\b")

# Casual portal messages are often all lower case ("hi its maria, my son tom said ...").
# Without capitals only a strong cue marks a name, and the word after it must not be one
# of the common words that follow such cues (``data/common_words.txt``).
LOWER_CUES = re.compile(
    rf"\b(?:it'?s|this{SP}+is|i'?m|i{SP}+am){SP}+(?P<a>[{LO}]{{2,}})"
    rf"(?={SP}*(?:again|here|[,.!]|$))"
    rf"|\b(?:thx|thanks|thank{SP}+you|cheers|regards){SP}*,?{SP}*(?P<b>[{LO}]{{2,}})"
    rf"(?={SP}*(?:[.!]|$))"
    rf"|\b(?:my|our){SP}+(?:{_any(RELATIONS)}){SP}+(?P<c>[{LO}]{{2,}})\b",
    re.MULTILINE,
)
