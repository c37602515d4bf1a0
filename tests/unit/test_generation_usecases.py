"""The generation use cases called directly, without gRPC: each check's message, the
sampling a backend receives, what is reported to the monitor, streaming and its
cancellation, and candidates (the same paths through gRPC: test_generation_rpcs.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from clinalign.common.errors import InvalidArgument
from clinalign.generation import fhir
from clinalign.generation.backend import EOS, STOP, Delta, Event, Generated, ModelInfo
from clinalign.generation.config import GenerationSettings
from clinalign.generation.convert import completion_to_proto, stream_event_to_proto
from clinalign.generation.drafts import NOTICE, Draft, UserMessage
from clinalign.generation.params import Sampling, SamplingRequest
from clinalign.generation.reporter import MonitorReporter
from clinalign.generation.reporting import production_output
from clinalign.generation.router import Router
from clinalign.generation.spool import OutputSpool
from clinalign.generation.usecases import (
    CandidatesRequest,
    FhirInput,
    Generation,
    Request,
    user_message,
)
from clinalign.generation.v1 import generation_pb2 as pb
from clinalign.monitor.v1 import monitor_pb2

BUNDLE = (Path(fhir.__file__).parent / "examples" / "patient_bundle.json").read_text()
QUESTION = "I have had a fever for three days. What should I do?"


class FakeBackend:
    """Answers every prompt with ``words``, one delta each, and records what it was asked."""

    def __init__(self, version: str, words: tuple[str, ...] = ("Rest", " and", " drink.")):
        self.info = ModelInfo("policy", version, uri=f"/models/{version}", weights_hash="sha:1")
        self.words = words
        self.asked: list[tuple[str, Sampling, bool]] = []
        self.closed_streams = 0
        self.finished_streams = 0

    async def start(self) -> ModelInfo:
        return self.info

    async def stream(
        self, prompt: str, sampling: Sampling, *, deltas: bool = True
    ) -> AsyncGenerator[Event, None]:
        self.asked.append((prompt, sampling, deltas))
        try:
            for i, word in enumerate(self.words, 1):
                await asyncio.sleep(0)
                if deltas:
                    yield Delta(word, i)
            yield Generated(
                text="".join(self.words),
                finish_reason=EOS,
                prompt_tokens=9,
                completion_tokens=len(self.words),
                model=self.info,
                queue_s=0.0,
                ttft_s=0.01,
                duration_s=0.25,
            )
            self.finished_streams += 1
        finally:
            self.closed_streams += 1

    @property
    def queue_depth(self) -> int:
        return 0

    async def close(self) -> None:
        pass


class Sent:
    """The monitor's side: every batch the reporter delivers."""

    def __init__(self) -> None:
        self.outputs: list[monitor_pb2.ProductionOutput] = []

    async def __call__(self, batch: list[monitor_pb2.ProductionOutput]) -> None:
        self.outputs.extend(batch)


def _settings() -> GenerationSettings:
    return GenerationSettings(
        port=0,
        device="cpu",
        report_to_monitor=False,
        max_prompt_chars=2000,
        default_max_new_tokens=32,
        max_new_tokens_limit=64,
    )


@pytest.fixture
def backends() -> dict[str, FakeBackend]:
    return {v: FakeBackend(v) for v in ("v1", "v2", "v3")}


@pytest.fixture
def router(backends: dict[str, FakeBackend]) -> Router:
    async def load(version: str) -> FakeBackend:
        if version not in backends:
            raise InvalidArgument("model_versions", f"unknown version {version!r}")
        return backends[version]

    r = Router(load)
    r.serve(backends["v1"])
    return r


@pytest.fixture
async def reported() -> AsyncIterator[tuple[MonitorReporter, Sent]]:
    sent = Sent()
    reporter = MonitorReporter(sent, OutputSpool(None, capacity=16), batch=4)
    reporter.start()
    yield reporter, sent
    await reporter.stop()


@pytest.fixture
def generation(router: Router, reported: tuple[MonitorReporter, Sent]) -> Generation:
    return Generation(_settings(), router, reported[0])


async def _flush(reported: tuple[MonitorReporter, Sent]) -> list[monitor_pb2.ProductionOutput]:
    reporter, sent = reported
    await reporter.stop()
    return sent.outputs


# --- the message the model is asked ------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (None, r"^input: is required: set input\.prompt or input\.fhir$"),
        ("", r"^input\.prompt: must not be empty$"),
        ("  \n ", r"^input\.prompt: must not be empty$"),
        ("x" * 41, r"^input\.prompt: is 41 characters; at most 40$"),
        (
            FhirInput(BUNDLE, task=None),
            r"^input\.fhir\.task: is required: CLINICAL_TASK_PATIENT_QUESTION, _SUMMARY or "
            r"_DISCHARGE_INSTRUCTIONS$",
        ),
        (
            FhirInput(BUNDLE, "summary", question="Why?"),
            r"^input\.fhir\.question: is only used with CLINICAL_TASK_PATIENT_QUESTION",
        ),
        (
            FhirInput("", "summary"),
            r"^input\.fhir\.bundle_json: must not be empty$",
        ),
    ],
)
def test_user_message_names_the_field_at_fault(
    source: str | FhirInput | None, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        user_message(source, max_chars=40)


def test_user_message_passes_a_prompt_as_it_is() -> None:
    assert user_message(" hello ", max_chars=40) == UserMessage(" hello ", "")


def test_user_message_renders_fhir_with_the_current_template() -> None:
    message = user_message(FhirInput(BUNDLE, "patient_question", QUESTION), max_chars=16_000)
    expected = fhir.render(BUNDLE, "patient_question", QUESTION, max_chars=16_000)
    assert message == UserMessage(expected.text, expected.template_version)
    assert message.template_version == fhir.template_versions()["patient_question"][-1]


# --- Generate ----------------------------------------------------------------------------


async def test_generate_applies_defaults_and_reports_the_draft(
    generation: Generation,
    backends: dict[str, FakeBackend],
    reported: tuple[MonitorReporter, Sent],
) -> None:
    before = datetime.now(UTC)
    draft = await generation.generate(Request(QUESTION, SamplingRequest(temperature=0.0)))

    [(prompt, sampling, deltas)] = backends["v1"].asked
    assert (prompt, deltas) == (QUESTION, False)
    assert sampling == Sampling(temperature=0.0, max_new_tokens=32)  # the settings' default
    assert draft.result.text == "Rest and drink."
    assert draft.message == UserMessage(QUESTION)
    assert draft.output_id.startswith("out-") and draft.notice == NOTICE
    assert before <= draft.created <= datetime.now(UTC)

    [output] = await _flush(reported)
    assert output == production_output(draft)
    assert (output.output_id, output.prompt, output.text) == (
        draft.output_id,
        QUESTION,
        "Rest and drink.",
    )
    assert (output.model_version, output.latency_s, output.completion_tokens) == ("v1", 0.25, 3)
    assert output.create_time.ToDatetime(UTC) == draft.created
    assert output.task == "free_text"


async def test_generate_records_the_template_version_of_a_fhir_prompt(
    generation: Generation, reported: tuple[MonitorReporter, Sent]
) -> None:
    draft = await generation.generate(Request(FhirInput(BUNDLE, "summary")))
    assert draft.message.template_version.startswith("summary/")
    [output] = await _flush(reported)
    assert output.prompt_template_version == draft.message.template_version
    assert output.task == "summary"


@pytest.mark.parametrize("task", fhir.TASKS)
def test_a_rendered_message_names_its_task_as_the_monitor_records_it(task: str) -> None:
    question = QUESTION if task == "patient_question" else ""
    message = user_message(FhirInput(BUNDLE, task, question), max_chars=16_000)
    assert message.task == task
    assert user_message(QUESTION, max_chars=100).task == "free_text"


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        (SamplingRequest(top_p=1.5), r"^sampling\.top_p: must be in \(0, 1\], got 1\.5$"),
        (
            SamplingRequest(max_new_tokens=65),
            r"^sampling\.max_new_tokens: must be in \[1, 64\], got 65$",
        ),
        (SamplingRequest(stop=("",)), r"^sampling\.stop\[0\]: must be 1 to 64 characters$"),
    ],
)
async def test_generate_refuses_bad_sampling_before_generating(
    generation: Generation,
    backends: dict[str, FakeBackend],
    reported: tuple[MonitorReporter, Sent],
    sampling: SamplingRequest,
    message: str,
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await generation.generate(Request(QUESTION, sampling))
    assert backends["v1"].asked == []
    assert await _flush(reported) == []


async def test_generate_works_without_a_reporter(router: Router) -> None:
    draft = await Generation(_settings(), router, None).generate(Request(QUESTION))
    assert draft.result.finish_reason == EOS


# --- GenerateStream ----------------------------------------------------------------------


async def test_stream_yields_deltas_then_the_reported_draft(
    generation: Generation,
    backends: dict[str, FakeBackend],
    reported: tuple[MonitorReporter, Sent],
) -> None:
    events = [e async for e in generation.generate_stream(Request(QUESTION))]

    assert events[:3] == [Delta("Rest", 1), Delta(" and", 2), Delta(" drink.", 3)]
    draft = events[3]
    assert isinstance(draft, Draft) and len(events) == 4
    assert draft.result.text == "".join(e.text for e in events[:3] if isinstance(e, Delta))
    assert backends["v1"].asked[0][2] is True  # deltas asked for
    [output] = await _flush(reported)
    assert output.output_id == draft.output_id


async def test_closing_the_stream_early_stops_the_generation_and_reports_nothing(
    generation: Generation,
    backends: dict[str, FakeBackend],
    reported: tuple[MonitorReporter, Sent],
) -> None:
    events = generation.generate_stream(Request(QUESTION))
    async with contextlib.aclosing(events):
        first = await anext(events)
    assert first == Delta("Rest", 1)
    assert (backends["v1"].closed_streams, backends["v1"].finished_streams) == (1, 0)
    assert await _flush(reported) == []


async def test_stream_validates_before_picking_a_backend(
    generation: Generation, backends: dict[str, FakeBackend]
) -> None:
    with pytest.raises(InvalidArgument, match=r"^input: is required"):
        await anext(generation.generate_stream(Request(None)))
    assert backends["v1"].asked == []


# --- GenerateCandidates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (CandidatesRequest(None, n=0), r"^input: is required"),  # the input first
        (CandidatesRequest(QUESTION, n=1), r"^n: must be in \[2, 16\], got 1$"),
        (CandidatesRequest(QUESTION, n=17), r"^n: must be in \[2, 16\], got 17$"),
        (
            CandidatesRequest(QUESTION, n=2, sampling=SamplingRequest(temperature=0.0)),
            r"^sampling\.temperature: must be above 0: greedy candidates would be identical$",
        ),
        (
            CandidatesRequest(QUESTION, n=2, sampling=SamplingRequest(temperature=3.0)),
            r"^sampling\.temperature: must be in \[0, 2\], got 3$",
        ),
        (
            CandidatesRequest(QUESTION, n=2, model_versions=("v1", "v2", "v3")),
            r"^model_versions: at most 2 versions$",
        ),
        (
            CandidatesRequest(QUESTION, n=2, model_versions=("v2", "v2")),
            r"^model_versions: must be distinct, non-empty versions$",
        ),
        (
            CandidatesRequest(QUESTION, n=2, model_versions=("",)),
            r"^model_versions: must be distinct, non-empty versions$",
        ),
    ],
)
async def test_candidates_checks(
    generation: Generation,
    backends: dict[str, FakeBackend],
    request_: CandidatesRequest,
    message: str,
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await generation.generate_candidates(request_)
    assert all(not b.asked for b in backends.values())


async def test_candidates_count_seeds_up_over_the_versions_and_are_not_reported(
    generation: Generation,
    backends: dict[str, FakeBackend],
    reported: tuple[MonitorReporter, Sent],
) -> None:
    request = CandidatesRequest(
        QUESTION, n=4, sampling=SamplingRequest(seed=7), model_versions=("v2", "v3")
    )
    drafts = await generation.generate_candidates(request)

    assert [d.result.model.version for d in drafts] == ["v2", "v3", "v2", "v3"]
    assert [s.seed for _, s, _ in backends["v2"].asked] == [7, 9]
    assert [s.seed for _, s, _ in backends["v3"].asked] == [8, 10]
    assert backends["v1"].asked == []
    assert len({d.output_id for d in drafts}) == 4
    assert await _flush(reported) == []


async def test_candidates_without_versions_use_the_served_one_and_keep_no_seed(
    generation: Generation, backends: dict[str, FakeBackend]
) -> None:
    drafts = await generation.generate_candidates(CandidatesRequest(QUESTION, n=3))
    assert [d.result.model.version for d in drafts] == ["v1"] * 3
    assert [s.seed for _, s, _ in backends["v1"].asked] == [None] * 3


# --- ListModels and ActivateModel --------------------------------------------------------


async def test_activate_switches_the_served_versions(generation: Generation) -> None:
    assert [(s.info.version, s.traffic_fraction) for s in generation.list_models()] == [("v1", 1.0)]
    served = await generation.activate_model("v2", "v3", 0.25)
    assert [(s.info.version, s.traffic_fraction) for s in served] == [("v2", 0.75), ("v3", 0.25)]
    assert generation.list_models() == served


@pytest.mark.parametrize(
    ("version", "canary", "fraction", "message"),
    [
        ("", "", 0.0, r"^version: is required: the registry version to serve$"),
        ("v2", "v2", 0.1, r"^canary_version: must differ from version$"),
        ("v2", "v3", 0.0, r"^canary_fraction: must be above 0 when canary_version is set$"),
        ("v2", "v3", 0.6, r"^canary_fraction: must be in \[0, 0\.5\], got 0\.6$"),
    ],
)
async def test_activate_checks(
    generation: Generation, version: str, canary: str, fraction: float, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await generation.activate_model(version, canary, fraction)
    assert [s.info.version for s in generation.list_models()] == ["v1"]


# --- back to protobuf --------------------------------------------------------------------


async def test_a_draft_converts_to_the_completion_the_caller_sees(
    generation: Generation,
) -> None:
    draft = await generation.generate(Request(QUESTION, SamplingRequest(stop=("drink",))))
    completion = completion_to_proto(draft)
    assert completion.finish_reason == pb.FINISH_REASON_EOS
    assert completion.provenance.output_id == draft.output_id
    assert completion.provenance.notice == NOTICE
    assert completion.provenance.create_time.ToDatetime(UTC) == draft.created
    last = stream_event_to_proto(draft)
    assert (last.text_delta, last.completion_tokens) == ("", 3)
    assert last.completion == completion
    stopped = Draft(
        Generated("Rest", STOP, 1, 1, draft.result.model, 0, 0, 0),
        draft.message,
        "o",
        draft.created,
    )
    assert completion_to_proto(stopped).finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
