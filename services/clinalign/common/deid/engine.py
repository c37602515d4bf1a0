"""``Deidentifier``: Presidio's analyzer over ClinAlign's recognizers, then Presidio
anonymizer operators over the spans found."""

from __future__ import annotations

from collections.abc import Iterable

from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerResult
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NoOpNlpEngine
from presidio_analyzer.recognizer_registry import RecognizerRegistry
from presidio_anonymizer.operators import Operator, Replace

from clinalign.common.deid.entities import ENTITY_TYPES, DeidResult, EntityType, Span
from clinalign.common.deid.pseudonyms import HmacPseudonym
from clinalign.common.deid.recognizers import ClinicalIdentifierRecognizer, PersonNameRecognizer
from clinalign.common.deid.settings import DeidSettings

_LANGUAGE = "en"


OLD_AGE = "90 or older"


class _NoContextEnhancer(ContextAwareEnhancer):
    """Context is already inside our patterns (``MRN:``, ``Dr.``, ``her son``); Presidio's
    default lemma-based enhancer needs NLP tokens, which the no-op engine does not make."""

    def __init__(self) -> None:
        super().__init__(
            context_similarity_factor=0.0,
            min_score_with_context_similarity=0.0,
            context_prefix_count=0,
            context_suffix_count=0,
        )

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        return raw_results


def build_analyzer() -> AnalyzerEngine:
    """A Presidio ``AnalyzerEngine`` with ClinAlign's recognizers and no NLP model."""
    registry = RecognizerRegistry(supported_languages=[_LANGUAGE])
    registry.add_recognizer(ClinicalIdentifierRecognizer())
    registry.add_recognizer(PersonNameRecognizer())
    nlp_engine = NoOpNlpEngine(models=[{"lang_code": _LANGUAGE, "model_name": "no_op"}])
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=[_LANGUAGE],
        context_aware_enhancer=_NoContextEnhancer(),
    )


def resolve(text: str, results: Iterable[RecognizerResult]) -> tuple[Span, ...]:
    """Sorted, non-overlapping spans. Overlapping results become one span typed by the
    most confident (then longest) of them; results of one type separated only by spaces
    ("Jane" + "Smith") become one span, as Presidio's anonymizer would merge them."""
    spans: list[Span] = []
    for r in sorted(results, key=lambda r: (r.start, -r.end)):
        entity: EntityType = r.entity_type  # type: ignore[assignment]
        if spans:
            last = spans[-1]
            gap = text[last.end : r.start]
            if r.start < last.end:
                stronger = (r.score, r.end - r.start) > (last.score, last.end - last.start)
                spans[-1] = Span(
                    last.start,
                    max(last.end, r.end),
                    entity if stronger else last.entity_type,
                    max(last.score, r.score),
                )
                continue
            if entity == last.entity_type and gap and not gap.strip(" \t"):
                spans[-1] = Span(last.start, r.end, entity, max(last.score, r.score))
                continue
        spans.append(Span(r.start, r.end, entity, r.score))
    return tuple(spans)


class Deidentifier:
    """Finds identifiers in free clinical text and replaces them.

    Build one at start-up and share it: construction compiles the patterns, ``redact``
    keeps no state and is safe to call from several threads.
    """

    def __init__(self, settings: DeidSettings) -> None:
        self.settings = settings
        self._analyzer = build_analyzer()
        self._entities: list[str] = list(settings.entities)
        # Presidio's operators, applied in one pass over the spans by ``redact``: its
        # AnonymizerEngine rebuilds the whole text once per span (quadratic on long texts
        # with many identifiers) and re-resolves conflicts ``resolve`` has already settled.
        self._operator: Operator
        common: dict[str, object] = {}
        if settings.mode == "hmac":
            assert settings.hmac_key is not None  # DeidSettings refuses hmac without a key
            self._operator = HmacPseudonym()
            common = {
                "key": settings.hmac_key.get_secret_value().encode(),
                "length": settings.pseudonym_length,
            }
        else:
            self._operator = Replace()
        # The params Presidio's engine would pass each operator call, built once per type.
        self._params = {
            e: {**common, "entity_type": e, "new_value": f"[{e}]"} for e in ENTITY_TYPES
        }
        for params in self._params.values():
            self._operator.validate(params=params)

    def find(self, text: str) -> tuple[Span, ...]:
        """The identifiers in ``text``, without replacing them."""
        if not text.strip():
            return ()
        results = self._analyzer.analyze(
            text,
            language=_LANGUAGE,
            entities=self._entities,
            score_threshold=self.settings.score_threshold,
        )
        return resolve(text, results)

    def redact(self, text: str) -> DeidResult:
        spans = self.find(text)
        pieces: list[str] = []
        pos = 0
        for span in spans:
            original = text[span.start : span.end]
            # Safe Harbor keeps an age over 89 as the category "90 or older", in either mode.
            replacement = (
                OLD_AGE
                if span.entity_type == "AGE"
                else self._operator.operate(original, self._params[span.entity_type])
            )
            pieces += (text[pos : span.start], replacement)
            pos = span.end
        pieces.append(text[pos:])
        return DeidResult("".join(pieces), spans)
