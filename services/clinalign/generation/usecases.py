"""The generation service's use cases, one method per RPC, transport-free: each validates
its input (``InvalidArgument`` naming the request field), picks the backend, generates,
updates the service's metrics and reports production drafts to the monitor. The servicer
only converts between protobuf and these types (``convert``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

from clinalign.common.errors import InvalidArgument
from clinalign.generation import fhir, metrics
from clinalign.generation.backend import Backend, Delta, Generated, collect
from clinalign.generation.config import GenerationSettings
from clinalign.generation.drafts import Draft, UserMessage, new_draft
from clinalign.generation.params import Sampling, SamplingRequest
from clinalign.generation.reporter import MonitorReporter
from clinalign.generation.reporting import production_output
from clinalign.generation.router import Router, Served, validate_activation

MIN_CANDIDATES, MAX_CANDIDATES, MAX_CANDIDATE_VERSIONS = 2, 16, 2


@dataclass(frozen=True)
class FhirInput:
    """Structured context: a FHIR R4 Bundle and the task to render it for."""

    bundle_json: str
    task: str | None  # one of fhir.TASKS; None when the request names none
    question: str = ""
    template_version: str = ""


# A raw prompt, a FHIR input, or None when the request carries no input.
Source = str | FhirInput | None


@dataclass(frozen=True)
class Request:
    """One Generate or GenerateStream call."""

    source: Source
    sampling: SamplingRequest = field(default_factory=SamplingRequest)


@dataclass(frozen=True)
class CandidatesRequest:
    """One GenerateCandidates call: ``n`` drafts, spread over ``model_versions`` (none:
    the version that serves)."""

    source: Source
    n: int
    sampling: SamplingRequest = field(default_factory=SamplingRequest)
    model_versions: tuple[str, ...] = ()


def user_message(source: Source, max_chars: int) -> UserMessage:
    """The message the model is asked: the prompt as it is, or the FHIR input rendered."""
    if source is None:
        raise InvalidArgument("input", "is required: set input.prompt or input.fhir")
    if isinstance(source, FhirInput):
        if source.task is None:
            raise InvalidArgument(
                "input.fhir.task",
                "is required: CLINICAL_TASK_PATIENT_QUESTION, _SUMMARY or _DISCHARGE_INSTRUCTIONS",
            )
        rendered = fhir.render(
            source.bundle_json,
            source.task,
            source.question,
            source.template_version,
            max_chars=max_chars,
        )
        return UserMessage(rendered.text, rendered.template_version)
    if not source.strip():
        raise InvalidArgument("input.prompt", "must not be empty")
    if len(source) > max_chars:
        raise InvalidArgument("input.prompt", f"is {len(source)} characters; at most {max_chars}")
    return UserMessage(source)


def check_candidates(request: CandidatesRequest) -> None:
    """What GenerateCandidates asks beyond a Generate call's checks."""
    if not MIN_CANDIDATES <= request.n <= MAX_CANDIDATES:
        raise InvalidArgument(
            "n", f"must be in [{MIN_CANDIDATES}, {MAX_CANDIDATES}], got {request.n}"
        )
    if request.sampling.temperature == 0:
        raise InvalidArgument(
            "sampling.temperature", "must be above 0: greedy candidates would be identical"
        )


def check_candidate_versions(versions: tuple[str, ...]) -> None:
    if len(versions) > MAX_CANDIDATE_VERSIONS:
        raise InvalidArgument("model_versions", f"at most {MAX_CANDIDATE_VERSIONS} versions")
    if len(set(versions)) != len(versions) or any(not v for v in versions):
        raise InvalidArgument("model_versions", "must be distinct, non-empty versions")


# (version, canary, fraction) -> loaded, when the registry serves exactly that
Activate = Callable[[str, str, float], Awaitable[None]]


class Generation:
    """The use cases over the served versions (``router``); production drafts go to the
    monitor through ``reporter`` when there is one."""

    def __init__(
        self,
        settings: GenerationSettings,
        router: Router,
        reporter: MonitorReporter | None,
        activate: Activate | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.reporter = reporter
        self._activate = activate

    async def generate(self, request: Request) -> Draft:
        message = self._message(request.source)
        sampling = self._sampling(request.sampling)
        result = await _run(self.router.pick(), message, sampling)
        return await self._publish(result, message)

    async def generate_stream(self, request: Request) -> AsyncGenerator[Delta | Draft, None]:
        """Deltas as the text is decoded, then the draft. Closing the iterator (the caller
        went away) stops the generation."""
        message = self._message(request.source)
        sampling = self._sampling(request.sampling)
        backend = self.router.pick()
        async with contextlib.aclosing(backend.stream(message.text, sampling)) as events:
            async for event in events:
                if isinstance(event, Delta):
                    yield event
                    continue
                assert isinstance(event, Generated)
                metrics.observe(event)
                yield await self._publish(event, message)

    async def generate_candidates(self, request: CandidatesRequest) -> list[Draft]:
        """``n`` drafts of one message for comparison, seeds counting up from the request's,
        spread round-robin over the versions asked for. They are not reported: candidates
        feed comparison tasks, not patients."""
        message = self._message(request.source)
        check_candidates(request)
        sampling = self._sampling(request.sampling)
        check_candidate_versions(request.model_versions)
        backends = [await self.router.backend(v) for v in request.model_versions]
        backends = backends or [self.router.pick()]
        jobs = []
        for i in range(request.n):
            seed = None if sampling.seed is None else sampling.seed + i
            one = dataclasses.replace(sampling, seed=seed)
            jobs.append(_run(backends[i % len(backends)], message, one))
        results = await asyncio.gather(*jobs)
        return [new_draft(r, message) for r in results]

    def list_models(self) -> list[Served]:
        return self.router.served()

    async def activate_model(self, version: str, canary: str, fraction: float) -> list[Served]:
        """Loads what the registry serves (``activate`` refuses anything else); without a
        registry check (tests of the router alone), switches the router directly."""
        validate_activation(version, canary, fraction)
        if self._activate is None:
            return await self.router.activate(version, canary, fraction)
        await self._activate(version, canary, fraction)
        return self.router.served()

    def _message(self, source: Source) -> UserMessage:
        return user_message(source, self.settings.max_prompt_chars)

    def _sampling(self, requested: SamplingRequest) -> Sampling:
        return requested.validate(
            default_max_new_tokens=self.settings.default_max_new_tokens,
            max_new_tokens_limit=self.settings.max_new_tokens_limit,
        )

    async def _publish(self, result: Generated, message: UserMessage) -> Draft:
        """A production draft, spooled for the monitor before it is returned (never waiting
        on the monitor itself)."""
        draft = new_draft(result, message)
        if self.reporter is not None:
            await self.reporter.submit(production_output(draft))
        return draft


async def _run(backend: Backend, message: UserMessage, sampling: Sampling) -> Generated:
    result = await collect(backend.stream(message.text, sampling, deltas=False))
    metrics.observe(result)
    return result
