"""Person names without an NLP model, in two passes over the text.

1. **Cues** (one regex, ``name_cues.CUES``): a title ("Dr.", "Mrs", "RN"), a credential
   after the name ("…, MD"), a relation ("her son Tom"), a field label or salutation
   ("Patient:", "Dear", "Thanks,", "seen by"), or a verb of reporting after it ("Tom
   agrees"). These carry most names in clinical text. Lower-case casual messages get
   their own, stricter cues ("hi its maria", "my son tom").
2. **Capitalised words**: each is checked against the words of names already found in
   this text (a later bare "Okafor" after "Dr. Okafor"), against a gazetteer of common
   given names (the next capitalised word then being the surname), and, as the first of
   two capitalised words, against a gazetteer of common surnames for the second.

Eponyms ("Parkinson's disease", "Foley catheter", "Murphy's sign") and saints'
institutions ("St. Mary's Hospital") are not names, even where the same word names a
clinician elsewhere in the note.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from importlib import resources

from clinalign.common.deid.name_cues import CUES, EPONYM_AFTER, LOWER_CUES, NEXT_WORD, WORD


def _word_list(name: str) -> frozenset[str]:
    text = resources.files("clinalign.common.deid").joinpath(f"data/{name}").read_text()
    return frozenset(
        word for line in text.splitlines() if not line.startswith("#") for word in line.split()
    )


@cache
def given_names() -> frozenset[str]:
    return _word_list("given_names.txt")


@cache
def surnames() -> frozenset[str]:
    return _word_list("surnames.txt")


@cache
def not_names() -> frozenset[str]:
    return _word_list("not_names.txt")


@cache
def common_words() -> frozenset[str]:
    return _word_list("common_words.txt")


def _is_eponym(text: str, end: int) -> bool:
    return EPONYM_AFTER.match(text, end) is not None


def _fold(word: str) -> str:
    """Without diacritics, so "Wiśniewski" finds "Wisniewski" in a gazetteer."""
    if word.isascii():
        return word
    return unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode()


def _after_saint(text: str, start: int) -> bool:
    """In "St. Mary's Hospital" or "Saint Luke's", the name is an institution's."""
    return text[max(0, start - 6) : start].endswith(("St. ", "St ", "Saint "))


def _in_list(word: str, names: frozenset[str]) -> bool:
    """A word, or any part of a hyphenated one ("Hernandez-Nair"), in ``names``."""
    folded = _fold(word)
    return folded in names or ("-" in folded and any(p in names for p in folded.split("-")))


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Drop leading and trailing words that are never names ("Dr. Smith Cardiology")."""
    never = not_names()
    words = [(m.start(), m.end()) for m in re.finditer(r"[^\s,]+", text[start:end])]
    while words and text[start + words[-1][0] : start + words[-1][1]] in never:
        words.pop()
    while words and text[start + words[0][0] : start + words[0][1]] in never:
        words.pop(0)
    if not words:
        return start, start
    return start + words[0][0], start + words[-1][1]


def _lowercase_names(text: str) -> list[tuple[int, int, float]]:
    found = []
    for m in LOWER_CUES.finditer(text):
        group = m.lastgroup
        if group is not None and m.group(group) not in common_words():
            found.append((m.start(group), m.end(group), 0.65))
    if found:  # later bare mentions of the same lower-case names
        words = sorted({text[s:e] for s, e, _ in found})
        again = re.compile(rf"\b(?:{'|'.join(map(re.escape, words))})\b")
        found += [(m.start(), m.end(), 0.6) for m in again.finditer(text)]
    return found


def find_names(text: str, cues: re.Pattern[str] = CUES) -> list[tuple[int, int, float]]:
    """Every person name in ``text`` as ``(start, end, score)``; spans may overlap."""
    never = not_names()
    found: list[tuple[int, int, float]] = []
    known: set[str] = set()  # words of names found so far, matched again elsewhere
    for m in cues.finditer(text):
        group = m.lastgroup or "c"
        start, end = _trim(text, *m.span(group))
        if end <= start or _is_eponym(text, end):
            continue
        # A credential or a verb after a capitalised word is a weaker sign than a title.
        found.append((start, end, 0.8 if group in "cv" else 0.85))
        known.update(w.casefold() for w in WORD.findall(text, start, end) if w not in never)

    found += _lowercase_names(text)
    given, family = given_names(), surnames()
    unmatched: list[tuple[str, int, int]] = []
    for m in WORD.finditer(text):
        word, start, end = m.group(), m.start(), m.end()
        if word in never or _is_eponym(text, end) or _after_saint(text, start):
            continue
        if word.casefold() in known:
            found.append((start, end, 0.75))
            continue
        # A listed given name, with the next word as its surname; or any capitalised word
        # before a listed surname ("Kwame Young").
        after = NEXT_WORD.match(text, end)
        if after is not None and (after.group(1) in never or _is_eponym(text, after.end())):
            after = None
        if _in_list(word, given):
            found.append((start, after.end() if after else end, 0.6))
        elif after is not None and _in_list(after.group(1), family):
            found.append((start, after.end(), 0.6))
            # "Thaddeus Hernandez-Nair": both words are now known names of this text.
            known.update((word.casefold(), after.group(1).casefold()))
        else:
            unmatched.append((word, start, end))
    # Words learnt from a surname pair count where they came before it too.
    found += [(s, e, 0.7) for word, s, e in unmatched if word.casefold() in known]
    return found
