"""The model card of a policy version: its facts as the trainer's registry holds them
(``GetModelVersion``: lineage, metrics, the promotion gate's decisions), what the gateway's
operator says it is for and where it falls short, and three renderings of one card:

- JSON, camelCase keys;
- Markdown, a model card a person reads (every registry string escaped, so a manifest or
  a gate message cannot inject links, images, HTML or table cells);
- a FHIR R4 ``Device`` after the HL7 *AI Transparency on FHIR* IG's AI-Device profile, as
  far as R4 allows: type ``Large-Language-Models``, the weights hash as identifier, the
  training snapshot and every evaluation figure as properties, and the Markdown card in
  ``note[0].text`` (the IG's "Model-Card in Device.note.text" pattern).

``ModelCards`` reads cards through the gateway's ``Backend`` and keeps each for a while:
a version's registry facts never change, its stage and gate decisions rarely. A card's
Provenance needs one for every hook, so a registry that cannot answer gives the hook a
card built from the draft's own provenance (``for_draft``) rather than an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from clinalign.cdshooks import metrics
from clinalign.cdshooks.cards import WEIGHTS_SYSTEM, escape_markdown
from clinalign.cdshooks.errors import GatewayError, NotFound
from clinalign.common.protos import KIND_FROM_PROTO, STAGE_TO_PROTO
from clinalign.common.v1 import common_pb2
from clinalign.trainer.v1 import trainer_pb2 as tpb

log = logging.getLogger("clinalign.cdshooks")

AI_DEVICE_PROFILE = "http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Device"
AI_DEVICE_TYPES = "http://hl7.org/fhir/uv/aitransparency/CodeSystem/AIdeviceTypeCS"
PROPERTY_SYSTEM = "https://fhir.clinalign.org/CodeSystem/model-property"
GATE_CHECK_SYSTEM = "https://fhir.clinalign.org/CodeSystem/gate-check"
METRIC_SYSTEM = "https://fhir.clinalign.org/CodeSystem/model-metric"
# Stages in which a version writes drafts (FHIR Device.status active).
ACTIVE_STAGES = ("serving", "canary")
# A failed registry read is remembered this long (at most the cache's TTL), so a registry
# that hangs costs one hook its deadline, not every hook.
FAILURE_TTL_S = 5.0
# Cards kept at most: the model-card URL is public, so unknown versions asked for must not
# grow the cache without end.
MAX_CARDS = 256
_STAGES = {v: k for k, v in STAGE_TO_PROTO.items()}


def model_card_url(public_url: str, name: str, version: str) -> str:
    return f"{public_url}/model-cards/{quote(name, safe='')}/{quote(version, safe='')}"


def _finite(value: float) -> float | None:
    """A figure as JSON and FHIR can carry it: NaN and infinities are no figure."""
    return value if math.isfinite(value) else None


def _md(text: object) -> str:
    """A registry string as Markdown text: on one line, every syntax character escaped."""
    return escape_markdown(" ".join(str(text).split()))


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


@dataclass(frozen=True)
class Usage:
    """What the operator says the served policies are for and where they fall short
    (``CdsHooksSettings.model_intended_use`` and ``model_limitations``), and the tasks
    this gateway offers them for (its CDS services)."""

    intended_use: str
    limitations: tuple[str, ...]
    tasks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    """One figure the promotion gate checked (trainer ``GateCheck``)."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    message: str


@dataclass(frozen=True)
class Evaluation:
    """The gate decision a card reports: the one that let the version serve, else the
    newest refusal. Who asked is left out: the card is public."""

    promoted: bool
    checks: tuple[Check, ...]
    decide_time: str


def _evaluation(decisions: list[tpb.GateDecision]) -> Evaluation | None:
    promoted = [d for d in decisions if d.promoted]
    chosen = promoted[-1] if promoted else (decisions[-1] if decisions else None)
    if chosen is None:
        return None
    checks = tuple(
        Check(c.name, _finite(c.value), _finite(c.threshold), c.passed, c.message)
        for c in chosen.checks
    )
    when = chosen.decide_time.ToJsonString() if chosen.HasField("decide_time") else ""
    return Evaluation(chosen.promoted, checks, when)


def training_method(manifest: Mapping[str, Any]) -> str:
    """How the version was made, from its manifest: ``method`` of a trained policy (PPO
    and RLOO name an ``algorithm``, SFT and DPO a ``name``, each with its loss), a
    foundation model's bootstrap preset, or where an imported model came from."""
    method = manifest.get("method")
    if isinstance(method, dict):
        name = str(method.get("algorithm") or method.get("name") or "")
        loss = str(method.get("loss") or method.get("policy_loss") or "")
        return f"{name}: {loss}" if name and loss else name or loss
    if manifest.get("kind") == "foundation":
        return f"pretrained from scratch by clinalign bootstrap (preset {manifest.get('preset')})"
    imported = manifest.get("imported_from")
    if isinstance(imported, dict):
        return f"imported ({imported.get('format', 'unknown format')}): {manifest.get('name', '')}"
    return ""


def _usage(manifest: Mapping[str, Any], usage: Usage) -> tuple[str, tuple[str, ...]]:
    """The manifest's own ``intended_use`` replaces the operator's; its ``limitations``
    come first, then the operator's."""
    intended = manifest.get("intended_use")
    own = manifest.get("limitations")
    limits = [str(x) for x in own] if isinstance(own, list) else []
    limits += [x for x in usage.limitations if x not in limits]
    if not (isinstance(intended, str) and intended):
        intended = usage.intended_use
    return intended, tuple(limits)


@dataclass(frozen=True)
class ModelCard:
    """The facts of one model version's card. ``available`` False: the registry could
    not be read, and the card holds what a draft's provenance carries, with ``caveat``."""

    name: str
    version: str
    weights_hash: str
    intended_use: str
    limitations: tuple[str, ...]
    tasks: tuple[str, ...] = ()
    kind: str = ""
    stage: str = ""
    base_model: str = ""
    parent_version: str = ""
    snapshot_hash: str = ""
    job_id: str = ""
    method: str = ""
    register_time: str = ""
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    evaluation: Evaluation | None = None
    available: bool = True
    caveat: str = ""

    @classmethod
    def from_registry(cls, reply: tpb.GetModelVersionResponse, usage: Usage) -> ModelCard:
        mv = reply.version
        try:
            manifest = json.loads(reply.manifest_json or "{}")
        except ValueError:
            manifest = {}
        if not isinstance(manifest, dict):
            manifest = {}
        intended, limitations = _usage(manifest, usage)
        return cls(
            name=mv.ref.name,
            version=mv.ref.version,
            weights_hash=mv.weights_hash,
            intended_use=intended,
            limitations=limitations,
            tasks=usage.tasks,
            kind=KIND_FROM_PROTO.get(mv.kind, ""),
            stage=_STAGES.get(mv.stage, ""),
            base_model=mv.base_model,
            parent_version=mv.parent_version,
            snapshot_hash=mv.snapshot_hash,
            job_id=mv.job_id,
            method=training_method(manifest),
            register_time=mv.create_time.ToJsonString() if mv.HasField("create_time") else "",
            metrics={k: _finite(v) for k, v in sorted(mv.metrics.items())},
            evaluation=_evaluation(list(reply.decisions)),
        )

    @classmethod
    def unavailable(cls, provenance: common_pb2.Provenance, usage: Usage, caveat: str) -> ModelCard:
        return cls(
            name=provenance.model_name,
            version=provenance.model_version,
            weights_hash=provenance.weights_hash,
            intended_use=usage.intended_use,
            limitations=usage.limitations,
            tasks=usage.tasks,
            available=False,
            caveat=caveat,
        )

    def url(self, public_url: str) -> str:
        return model_card_url(public_url, self.name, self.version)

    # -- renderings

    def as_json(self, public_url: str) -> dict[str, Any]:
        e = self.evaluation
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "stage": self.stage,
            "weightsHash": self.weights_hash,
            "baseModel": self.base_model,
            "parentVersion": self.parent_version,
            "snapshotHash": self.snapshot_hash,
            "jobId": self.job_id,
            "trainingMethod": self.method,
            "registerTime": self.register_time,
            "metrics": dict(self.metrics),
            "evaluation": None
            if e is None
            else {
                "promoted": e.promoted,
                "decideTime": e.decide_time,
                "checks": [
                    {
                        "name": c.name,
                        "value": c.value,
                        "threshold": c.threshold,
                        "passed": c.passed,
                        "message": c.message,
                    }
                    for c in e.checks
                ],
            },
            "intendedUse": self.intended_use,
            "limitations": list(self.limitations),
            "tasks": list(self.tasks),
            "registryAvailable": self.available,
            "caveat": self.caveat,
            "url": self.url(public_url),
        }

    def as_markdown(self) -> str:
        lines = [f"# Model card: {_md(self.name)} {_md(self.version)}", ""]
        if not self.available:
            lines += [f"**{_md(self.caveat)}**", ""]
        lines += ["## Model", ""]
        lines += _items(
            ("Name", self.name),
            ("Version", self.version),
            ("Stage", self.stage),
            ("Weights (SHA-256)", self.weights_hash),
            ("Registered", self.register_time),
        )
        lines += ["## Training", ""]
        training = _items(
            ("Method", self.method),
            ("Base model", self.base_model),
            ("Trained from version", self.parent_version),
            ("Training data snapshot (SHA-256)", self.snapshot_hash),
            ("Training job", self.job_id),
        )
        unknown = "Not recorded in the registry." if self.available else "Not known (see above)."
        lines += training or [unknown, ""]
        lines += ["## Evaluation", "", *self._evaluation_markdown()]
        lines += ["## Intended use", "", _md(self.intended_use), ""]
        if self.tasks:
            lines += [f"Offered for: {_md('; '.join(self.tasks))}.", ""]
        lines += ["## Limitations", ""]
        lines += [f"- {_md(x)}" for x in self.limitations] or ["None recorded."]
        return "\n".join(lines).rstrip() + "\n"

    def _evaluation_markdown(self) -> list[str]:
        e = self.evaluation
        lines: list[str] = []
        if e is None:
            if not self.available:
                said = "Not known (see above)."
            elif self.stage == "registered":
                said = "The promotion gate has not judged this version yet."
            else:
                said = (
                    "The promotion gate never judged this version: it served from its "
                    "registration, as the first policy (the foundation model) does."
                )
            lines += [said, ""]
        else:
            verdict = "passed" if e.promoted else "refused"
            when = f" on {_md(e.decide_time)}" if e.decide_time else ""
            lines += [
                f"The promotion gate {verdict} this version{when}; every check it made, each "
                "safety criterion on its own:",
                "",
                "| check | value | threshold | passed | what it means |",
                "| --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {_md(c.name)} | {_figure(c.value)} | {_figure(c.threshold)} | "
                f"{'yes' if c.passed else 'no'} | {_md(c.message)} |"
                for c in e.checks
            ]
            lines.append("")
        if self.metrics:
            lines += [
                "Figures recorded at registration:",
                "",
                "| figure | value |",
                "| --- | --- |",
            ]
            lines += [f"| {_md(k)} | {_figure(v)} |" for k, v in self.metrics.items()]
            lines.append("")
        return lines

    def as_device(self, public_url: str) -> dict[str, Any]:
        """The card as a FHIR R4 Device (AI-Device profile); ``id`` is the version."""
        device: dict[str, Any] = {
            "resourceType": "Device",
            "id": self.version,
            "meta": {"profile": [AI_DEVICE_PROFILE]},
        }
        if self.weights_hash:
            device["identifier"] = [{"system": WEIGHTS_SYSTEM, "value": self.weights_hash}]
        device |= {
            # A card built from a draft's provenance is of the version that just wrote it.
            "status": "active" if self.stage in ACTIVE_STAGES or not self.available else "inactive",
            "url": self.url(public_url),
            "deviceName": [{"name": self.name, "type": "model-name"}],
            "type": {
                "coding": [{"system": AI_DEVICE_TYPES, "code": "Large-Language-Models"}],
                "text": "Clinical language model (AI)",
            },
            "version": [{"value": self.version}],
        }
        if properties := self._properties():
            device["property"] = properties
        device["note"] = [{"text": self.as_markdown()}]
        return device

    def _properties(self) -> list[dict[str, Any]]:
        def coded(system: str, code: str, text: str) -> dict[str, Any]:
            return {"coding": [{"system": system, "code": code}], "text": text}

        found = [
            {"type": coded(PROPERTY_SYSTEM, code, text), "valueCode": [{"text": value}]}
            for code, text, value in (
                (
                    "training-snapshot-sha256",
                    "training data snapshot (SHA-256)",
                    self.snapshot_hash,
                ),
                ("parent-version", "trained from version", self.parent_version),
                ("training-method", "training method", self.method),
            )
            if value
        ]
        for c in self.evaluation.checks if self.evaluation else ():
            if c.value is not None:
                verdict = "passed" if c.passed else "failed"
                text = f"promotion gate: {c.name} ({verdict}; threshold {_figure(c.threshold)})"
                found.append(
                    {
                        "type": coded(GATE_CHECK_SYSTEM, c.name, text),
                        "valueQuantity": [{"value": c.value}],
                    }
                )
        for name, value in self.metrics.items():
            if value is not None:
                found.append(
                    {"type": coded(METRIC_SYSTEM, name, name), "valueQuantity": [{"value": value}]}
                )
        return found


def _items(*pairs: tuple[str, str]) -> list[str]:
    """Markdown list items of the pairs that have a value, then a blank line."""
    found = [f"- **{label}:** {_md(value)}" for label, value in pairs if value]
    return [*found, ""] if found else []


class ModelCards:
    """Cards by version, read with ``fetch`` (``Backend.model_version``) and kept
    ``ttl_s`` seconds; a failed read is kept ``FAILURE_TTL_S`` at most, and ``MAX_CARDS``
    cards in all."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[tpb.GetModelVersionResponse]],
        usage: Usage,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch = fetch
        self.usage = usage
        self.ttl_s = ttl_s
        self.clock = clock
        self._cards: dict[str, tuple[float, ModelCard | GatewayError]] = {}
        # one registry read per version at a time (concurrent hooks share it); asks for
        # other versions, such as unknown ones at the public URL, do not wait behind it
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # version -> (lock, users)

    async def get(self, version: str) -> ModelCard:
        """The card of ``version``; ``NotFound`` when the registry has no such version,
        ``Upstream`` when it cannot answer."""
        found = self._fresh(version)
        if found is None:
            lock, users = self._locks.get(version, (asyncio.Lock(), 0))
            self._locks[version] = (lock, users + 1)
            try:
                async with lock:
                    found = self._fresh(version) or await self._read(version)
            finally:
                lock, users = self._locks[version]
                if users == 1:  # the last one asking: the lock goes (no growth by version)
                    del self._locks[version]
                else:
                    self._locks[version] = (lock, users - 1)
        if isinstance(found, GatewayError):
            raise found
        return found

    def _fresh(self, version: str) -> ModelCard | GatewayError | None:
        entry = self._cards.get(version)
        return entry[1] if entry is not None and entry[0] > self.clock() else None

    async def _read(self, version: str) -> ModelCard | GatewayError:
        found: ModelCard | GatewayError
        try:
            found = ModelCard.from_registry(await self.fetch(version), self.usage)
            ttl = self.ttl_s
        except GatewayError as err:
            found, ttl = err, min(self.ttl_s, FAILURE_TTL_S)
        now = self.clock()
        if len(self._cards) >= MAX_CARDS:
            self._cards = {v: e for v, e in self._cards.items() if e[0] > now}
            # refusals go first (unknown versions asked at the public URL), then the oldest
            failed = [v for v, e in self._cards.items() if isinstance(e[1], GatewayError)]
            for v in failed[: len(self._cards) - MAX_CARDS + 1]:
                del self._cards[v]
            while len(self._cards) >= MAX_CARDS:
                del self._cards[next(iter(self._cards))]
        self._cards[version] = (now + ttl, found)
        return found

    async def for_draft(self, provenance: common_pb2.Provenance) -> ModelCard:
        """The card of the version that wrote a draft. When the registry cannot say (it
        is unreachable, has no such version, or holds other weights under its name) the
        card holds the draft's provenance and says so; never an error."""
        try:
            card = await self.get(provenance.model_version)
        except GatewayError as err:
            unknown = isinstance(err, NotFound)
            metrics.DEGRADED_CARDS.labels("not_found" if unknown else "unavailable").inc()
            log.warning(
                "model card of %s unavailable (%s): the card carries the draft's provenance",
                provenance.model_version,
                type(err).__name__,
            )
            return ModelCard.unavailable(
                provenance,
                self.usage,
                (
                    "The model registry holds no such version (a model served from outside "
                    "the registry): this card holds only what the draft's provenance records."
                    if unknown
                    else "The model registry could not be read when this draft was written: "
                    "this card holds only what the draft's provenance records."
                ),
            )
        if provenance.weights_hash and card.weights_hash != provenance.weights_hash:
            metrics.DEGRADED_CARDS.labels("weights_mismatch").inc()
            log.warning("weights of %s differ from its registry entry", provenance.model_version)
            return ModelCard.unavailable(
                provenance,
                self.usage,
                "The weights that wrote this draft are not the registry's weights of this "
                "version: this card holds only what the draft's provenance records.",
            )
        return card
