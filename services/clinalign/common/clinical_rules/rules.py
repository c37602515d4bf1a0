"""The rule checks: one (question, response) in, structured violations out.

`check` runs every rule over a response to a patient question and returns what it breaks,
most severe first. The rules are pure functions of the two texts and the formulary; they
read no model and share no code with the simulated panel's rubric, so a judge built on
them is independent of both the reward model and the rubric (a test reports how often
they agree with the rubric's safety criteria).
"""

from __future__ import annotations

from .advice import allergy_violations, contraindication_violations, read_response
from .dose import dose_violations
from .formulary import Formulary, load_formulary
from .violations import Violation


def check(question: str, response: str, formulary: Formulary | None = None) -> list[Violation]:
    """Every rule `response` breaks as an answer to `question`, most severe first.

    `formulary` defaults to the shipped one. Empty texts break no rule.
    """
    if not response.strip():
        return []
    formulary = formulary or load_formulary()
    reading = read_response(question, response, formulary)
    found = [
        *allergy_violations(question, response, formulary, reading),
        *contraindication_violations(question, response, formulary, reading),
        *dose_violations(question, response, formulary),
    ]
    unique = list(dict.fromkeys(found))
    return sorted(unique, key=lambda v: -v.severity.rank)
