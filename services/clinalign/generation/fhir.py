"""Structured clinical context: a FHIR R4 Bundle rendered into the prompt the model sees.

``render`` reads the facts a prompt needs from the Bundle (``fhir_bundle``: which resources,
which elements, and how each is checked against the FHIR R4 JSON rules, ``fhir_json``) and
renders them with a versioned template. Every problem names its full protobuf path, e.g.
``input.fhir.bundle_json.entry[3].resource.valueQuantity.value: must be a JSON number``.

Templates live in ``data/templates/<task>/<version>.j2``. A released version is never
edited: an output's provenance names the version, and re-rendering it must give the same
prompt. Change a prompt by adding a version; the last one (in version order) is current.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from clinalign.common.errors import InvalidArgument
from clinalign.generation.fhir_bundle import (
    BUNDLE,
    FIELD,
    Allergy,
    Condition,
    Medication,
    Observation,
    Patient,
    read_bundle,
)

__all__ = [
    "BUNDLE",
    "BUNDLE_CHARS_PER_PROMPT_CHAR",
    "FIELD",
    "TASKS",
    "Allergy",
    "Condition",
    "Medication",
    "Observation",
    "Patient",
    "RenderedPrompt",
    "render",
    "template_versions",
]

TASKS = ("patient_question", "summary", "discharge_instructions")
_ENUM = {t: f"CLINICAL_TASK_{t.upper()}" for t in TASKS}

# FHIR JSON runs to roughly ten times the length of the lines rendered from it (the
# example bundle: 5.8k characters for 0.6k of record), so the input cap is a multiple of
# the prompt cap; it only bounds parsing work, the prompt cap is the real limit.
BUNDLE_CHARS_PER_PROMPT_CHAR = 16

_VERSION = re.compile(r"(\d{4})-(\d{2})-(\d+)")


@dataclass(frozen=True)
class RenderedPrompt:
    text: str  # the user message to send to the model
    template_version: str  # "<task>/<version>", e.g. "summary/2026-11-1"; for provenance


def render(
    bundle_json: str,
    task: str,
    question: str = "",
    template_version: str = "",
    *,
    max_chars: int = 16_000,
    today: dt.date | None = None,
) -> RenderedPrompt:
    """Render ``bundle_json`` for ``task`` (one of TASKS).

    Age is computed at the Bundle's ``timestamp``, or at ``today`` (default: the current
    UTC date) when it has none. Raises InvalidArgument naming the offending field.
    """
    if task not in TASKS:
        raise InvalidArgument(f"{FIELD}.task", f"must be one of {', '.join(TASKS)}; got {task!r}")
    question = question.strip()
    if task == "patient_question" and not question:
        raise InvalidArgument(f"{FIELD}.question", f"is required for {_ENUM[task]}")
    if task != "patient_question" and question:
        raise InvalidArgument(
            f"{FIELD}.question", f"is only used with {_ENUM['patient_question']}; leave it empty"
        )
    version = _resolve_version(task, template_version)
    record = read_bundle(bundle_json, max_chars * BUNDLE_CHARS_PER_PROMPT_CHAR, today)
    # Templates end in a newline, the message does not.
    text = _environment().get_template(f"{version}.j2").render(question=question, **record).strip()
    if len(text) > max_chars:
        raise InvalidArgument(
            FIELD, f"renders to {len(text)} characters; at most {max_chars}: send fewer resources"
        )
    return RenderedPrompt(text=text, template_version=version)


def template_versions() -> dict[str, list[str]]:
    """Each task's released template versions as "<task>/<version>", current last."""
    return {task: list(versions) for task, versions in _versions().items()}


# --- templates ---------------------------------------------------------------------------


def _template_dir() -> Traversable:
    return resources.files(__package__).joinpath("data", "templates")


@functools.cache
def _environment() -> SandboxedEnvironment:
    # Sandboxed so a template can only read the facts it is given; plain text, no
    # escaping; a misspelt variable fails instead of rendering as nothing.
    sources = {
        f"{d.name}/{f.name}": f.read_text("utf-8")
        for d in _template_dir().iterdir()
        if d.is_dir()
        for f in d.iterdir()
        if f.name.endswith(".j2")
    }
    return SandboxedEnvironment(
        loader=jinja2.DictLoader(sources),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@functools.cache
def _versions() -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {task: [] for task in TASKS}
    for d in _template_dir().iterdir():
        if d.name in found:
            found[d.name] += [f.name[:-3] for f in d.iterdir() if f.name.endswith(".j2")]
    return {
        task: tuple(f"{task}/{v}" for v in sorted(vs, key=_version_key))
        for task, vs in found.items()
    }


def _version_key(version: str) -> tuple[int, ...]:
    """Order versions by number: 2026-11-2 < 2026-11-10 < 2026-12-1."""
    match = _VERSION.fullmatch(version)
    if match is None:  # a packaging mistake, not a caller's: fail loudly
        raise RuntimeError(f"template version {version!r} is not YYYY-MM-N")
    return tuple(int(part) for part in match.groups())


def _resolve_version(task: str, requested: str) -> str:
    known = _versions()[task]
    if not requested:
        return known[-1]
    # Accept the bare version or the "<task>/<version>" form that provenance records.
    wanted = requested if "/" in requested else f"{task}/{requested}"
    if wanted not in known:
        raise InvalidArgument(
            f"{FIELD}.template_version",
            f"unknown version {requested!r} for task {task!r}; known: {', '.join(known)}",
        )
    return wanted
