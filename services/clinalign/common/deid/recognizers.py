"""Presidio recognizers over the fast finders in ``patterns`` and ``names``.

They are ordinary :class:`~presidio_analyzer.EntityRecognizer` subclasses: they need no
NLP artefacts, so they run under Presidio's ``NoOpNlpEngine``, and they can be added to
any Presidio ``RecognizerRegistry`` next to other recognizers.
"""

from __future__ import annotations

from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from clinalign.common.deid import names, patterns, scanner
from clinalign.common.deid.entities import ENTITY_TYPES


class ClinicalIdentifierRecognizer(EntityRecognizer):
    """Every identifier but names, from one scan of the combined rules (``scanner``)."""

    def __init__(self) -> None:
        self._rules = scanner.compile_rules((*patterns.RULES, patterns.city_cue_rule()))
        self._email = scanner.compile_rules((patterns.EMAIL,))
        entities: list[str] = [e for e in ENTITY_TYPES if e != "NAME"]
        super().__init__(supported_entities=entities, name="ClinAlignIdentifiers")

    def load(self) -> None:  # compiled in __init__; nothing to load
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        found = scanner.find(self._rules, text)
        if "@" in text:  # the e-mail pattern is costly at every word start
            found += scanner.find(self._email, text)
        wanted = set(entities)
        return [RecognizerResult(t, s, e, score) for s, e, t, score in found if t in wanted]


class PersonNameRecognizer(EntityRecognizer):
    """Person names from cues, this text's earlier names, and name gazetteers (``names``)."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["NAME"], name="ClinAlignNames")

    def load(self) -> None:
        # Read the word lists at start-up rather than on the first request.
        for word_list in (names.given_names, names.surnames, names.not_names, names.common_words):
            word_list()

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if "NAME" not in entities:
            return []
        return [RecognizerResult("NAME", s, e, score) for s, e, score in names.find_names(text)]
