"""Feedback: confirmed flags become preference data.

A flag confirmed through ResolveFlag gets a ``flag_feedback`` row (``pending``) in the
confirmation's own transaction (``enqueue``), so no confirmed flag is lost. A delivery
round (``deliver_due``, run by the monitor server every ``feedback_interval_s``) sends
each pending or failed one to the preference service as the ``service`` role:

- always: the flagged output's prompt (source FLAGGED, tags ``model_version:<v>`` and
  ``flag:<id>``), the output itself as a response with its model version, and the flag's
  category and severity as an error annotation of that response by the flagging
  clinician (the cost model's label: issue 21);
- with a corrected text: a correction of that response by the flagging clinician
  (``LabelContext.annotator_id``: the clinician's pseudonymous id), which the preference
  store keeps as a comparison preferring the correction, attributed to that clinician; an
  annotator the store does not know yet is registered (role "clinician") and the call
  retried;
- without one: ``feedback_candidates`` fresh candidates from GenerationService, stored as
  responses, and a labelling task (original + candidates) in batch ``feedback_batch_id``
  under guideline ``feedback_guideline_version``, which must be published.

Every preference call carries an idempotency key derived from the flag id, and each id
that comes back is saved on the feedback row as soon as it arrives: a round that fails or
crashes part-way is retried from where it stopped, and a call whose answer was lost is
replayed by the store, so nothing is written twice. A failure leaves the row ``failed``
with a reason naming the step and the status; the next round tries again.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from clinalign.common.auth import annotator_id
from clinalign.common.channels import Clients
from clinalign.common.db import Database
from clinalign.monitor import metrics
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.store import FeedbackRow, FlagRow, OutputRow
from clinalign.monitor.v1 import monitor_pb2 as pb

log = logging.getLogger("clinalign.monitor.feedback")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# The preference store's rules for annotator ids and prompt tags.
_TAG_UNSAFE = re.compile(r"[^a-z0-9_.:-]")
RPC_TIMEOUT_S = 60.0


class FeedbackError(Exception):
    """A delivery step that cannot finish now; its message is the recorded reason. A
    ``final`` one cannot finish ever (the output is gone or empty): it is not retried."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def _tag(prefix: str, value: str) -> str:
    return (prefix + _TAG_UNSAFE.sub("-", value.lower()))[:64]


def enqueue(session: Session, flag: FlagRow) -> None:
    """Marks a just-confirmed flag's feedback pending (call inside the confirmation's
    transaction)."""
    session.add(
        FeedbackRow(
            flag_id=flag.id,
            state=PENDING,
            annotator_id=annotator_id(flag.flagged_by),
            created_at=datetime.now(UTC),
        )
    )
    session.flush()


@dataclass(frozen=True)
class Settings:
    """The feedback settings (``MonitorSettings.feedback_*``, where each is documented and
    has its default)."""

    guideline_version: str
    batch_id: str
    overlap: int
    candidates: int
    max_new_tokens: int
    temperature: float
    batch: int
    max_attempts: int

    @classmethod
    def from_settings(cls, settings: MonitorSettings) -> Settings:
        return cls(
            guideline_version=settings.feedback_guideline_version,
            batch_id=settings.feedback_batch_id,
            overlap=settings.feedback_overlap,
            candidates=settings.feedback_candidates,
            max_new_tokens=settings.feedback_max_new_tokens,
            temperature=settings.feedback_temperature,
            batch=settings.feedback_batch,
            max_attempts=settings.feedback_max_attempts,
        )


@dataclass(frozen=True)
class _Item:
    """A flag to deliver, with what earlier attempts already got back."""

    flag_id: str
    annotator_id: str
    flagged_by: str  # the flagging clinician's principal: the annotator record's subject
    category: int  # clinalign.common.v1.ErrorCategory
    severity: int  # clinalign.monitor.v1.Severity (the same values as common.v1.Severity)
    corrected_text: str
    comment: str
    model_version: str
    prompt: str | None
    text: str | None
    prompt_id: str
    response_id: str
    candidate_ids: tuple[str, ...]
    attempts: int


def _due(session: Session, limit: int, max_attempts: int) -> list[_Item]:
    query = (
        select(FeedbackRow, FlagRow, OutputRow)
        .join(FlagRow, FlagRow.id == FeedbackRow.flag_id)
        .join(OutputRow, OutputRow.output_id == FlagRow.output_id)
        .where(
            or_(
                FeedbackRow.state == PENDING,
                and_(FeedbackRow.state == FAILED, FeedbackRow.attempts < max_attempts),
            )
        )
        .order_by(FeedbackRow.created_at, FeedbackRow.flag_id)
        .limit(limit)
    )
    return [
        _Item(
            flag_id=fb.flag_id,
            annotator_id=fb.annotator_id,
            flagged_by=flag.flagged_by,
            category=flag.category,
            severity=flag.severity,
            corrected_text=flag.corrected_text,
            comment=flag.comment,
            model_version=flag.model_version,
            prompt=out.prompt,
            text=out.text,
            prompt_id=fb.prompt_id,
            response_id=fb.response_id,
            candidate_ids=tuple(x for x in fb.candidate_ids.split(",") if x),
            attempts=fb.attempts,
        )
        for fb, flag, out in session.execute(query)
    ]


def _save(session: Session, flag_id: str, **values: Any) -> None:
    row = session.get(FeedbackRow, flag_id)
    if row is not None:
        for name, value in values.items():
            setattr(row, name, value)


class Delivery:
    """Delivers feedback through the peers' stubs (``peers.preference``, and for tasks
    ``peers.generation``), read on each use."""

    def __init__(self, db: Database, peers: Clients, settings: Settings) -> None:
        self.db = db
        self.peers = peers
        self.settings = settings

    async def deliver_due(self) -> tuple[int, int]:
        """One round: every pending or failed flag, oldest first; (delivered, failed)."""
        s = self.settings
        items = await self.db.run_sync(lambda session: _due(session, s.batch, s.max_attempts))
        done = failed = 0
        for item in items:
            if await self.deliver(item):
                done += 1
            else:
                failed += 1
        return done, failed

    async def deliver(self, item: _Item) -> bool:
        step = "prompt"
        try:
            if item.prompt is None or item.text is None:
                raise FeedbackError("the output's text was erased by retention", final=True)
            if not item.text.strip() or not item.prompt.strip():
                raise FeedbackError(
                    "the flagged output or its prompt is empty; the preference store keeps "
                    "no empty text",
                    final=True,
                )
            prompt_id = item.prompt_id or await self._prompt(item)
            step = "response"
            response_id = item.response_id or await self._response(item, prompt_id)
            step = "annotation"
            await self._annotation(item, response_id)
            if item.corrected_text:
                step = "correction"
                ids = {"correction_id": await self._correction(item, response_id)}
            else:
                step = "candidates"
                candidates = list(item.candidate_ids) or await self._candidates(item, prompt_id)
                step = "task"
                task_ids = await self._task(item, prompt_id, [response_id, *candidates])
                ids = {"task_ids": ",".join(task_ids)}
        except (grpc.aio.AioRpcError, FeedbackError) as err:
            reason = (
                f"{step}: {err.code().name}: {err.details()}"
                if isinstance(err, grpc.aio.AioRpcError)
                else f"{step}: {err}"
            )
            final = isinstance(err, FeedbackError) and err.final
            await self._fail(item.flag_id, reason, final)
            return False
        await self.db.run_write(lambda s: mark_delivered(s, item.flag_id, ids))
        metrics.FEEDBACK.labels("delivered").inc()
        return True

    async def _fail(self, flag_id: str, reason: str, final: bool) -> None:
        cap = self.settings.max_attempts

        def fail(s: Session) -> None:
            row = s.get(FeedbackRow, flag_id)
            if row is not None:
                row.state, row.reason = FAILED, reason[:2000]
                row.attempts = cap if final else row.attempts + 1

        await self.db.run_write(fail)
        metrics.FEEDBACK.labels("failed").inc()
        log.warning("flag feedback failed", extra={"fields": {"flag": flag_id, "step": reason}})

    async def _prompt(self, item: _Item) -> str:
        from clinalign.preference.v1 import preference_pb2 as ppb

        reply = await self.peers.preference.SubmitPrompts(
            ppb.SubmitPromptsRequest(
                idempotency_key=f"{item.flag_id}:prompt",
                prompts=[
                    ppb.PromptInput(
                        text=item.prompt or "",
                        source=ppb.PROMPT_SOURCE_FLAGGED,
                        tags=[
                            _tag("model_version:", item.model_version),
                            _tag("flag:", item.flag_id),
                        ],
                    )
                ],
            ),
            timeout=RPC_TIMEOUT_S,
        )
        prompt_id = str(reply.ids[0])
        await self.db.run_write(lambda s: _save(s, item.flag_id, prompt_id=prompt_id))
        return prompt_id

    async def _response(self, item: _Item, prompt_id: str) -> str:
        from clinalign.preference.v1 import preference_pb2 as ppb

        reply = await self.peers.preference.SubmitResponses(
            ppb.SubmitResponsesRequest(
                idempotency_key=f"{item.flag_id}:response",
                responses=[
                    ppb.ResponseInput(
                        prompt_id=prompt_id, text=item.text or "", model_version=item.model_version
                    )
                ],
            ),
            timeout=RPC_TIMEOUT_S,
        )
        response_id = str(reply.ids[0])
        await self.db.run_write(lambda s: _save(s, item.flag_id, response_id=response_id))
        return response_id

    async def _correction(self, item: _Item, response_id: str) -> str:
        from clinalign.preference.v1 import preference_pb2 as ppb

        request = ppb.SubmitCorrectionsRequest(
            idempotency_key=f"{item.flag_id}:correction",
            corrections=[
                ppb.Correction(
                    context=ppb.LabelContext(
                        annotator_id=item.annotator_id,
                        guideline_version=self.settings.guideline_version,
                    ),
                    response_id=response_id,
                    corrected_text=item.corrected_text,
                    comment=item.comment,
                )
            ],
        )
        reply = await self._as_clinician(
            item, lambda: self.peers.preference.SubmitCorrections(request, timeout=RPC_TIMEOUT_S)
        )
        return str(reply.ids[0])

    async def _annotation(self, item: _Item, response_id: str) -> str:
        from clinalign.preference.v1 import preference_pb2 as ppb

        request = ppb.SubmitErrorAnnotationsRequest(
            idempotency_key=f"{item.flag_id}:annotation",
            annotations=[
                ppb.ErrorAnnotation(
                    context=ppb.LabelContext(
                        annotator_id=item.annotator_id,
                        guideline_version=self.settings.guideline_version,
                    ),
                    response_id=response_id,
                    category=item.category,  # type: ignore[arg-type]
                    severity=item.severity,  # type: ignore[arg-type]
                    comment=item.comment,
                )
            ],
        )
        reply = await self._as_clinician(
            item,
            lambda: self.peers.preference.SubmitErrorAnnotations(request, timeout=RPC_TIMEOUT_S),
        )
        return str(reply.ids[0])

    async def _as_clinician(self, item: _Item, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call``'s reply; when the store does not know the flagging clinician yet (their
        first feedback), their pseudonym is registered, linked to their principal (so the
        record is theirs when they label), and ``call`` made once more."""
        from clinalign.preference.v1 import preference_pb2 as ppb

        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND or "annotator" not in (err.details() or ""):
                raise
        await self.peers.preference.RegisterAnnotator(
            ppb.RegisterAnnotatorRequest(
                annotator=ppb.Annotator(
                    id=item.annotator_id, role="clinician", subject=item.flagged_by
                )
            ),
            timeout=RPC_TIMEOUT_S,
        )
        return await call()

    async def _candidates(self, item: _Item, prompt_id: str) -> list[str]:
        from clinalign.generation.v1 import generation_pb2 as gpb
        from clinalign.preference.v1 import preference_pb2 as ppb

        s = self.settings
        # Seeded by the flag and attempt: reproducible, yet a retry after an attempt that
        # drew only empty drafts draws again.
        key = f"{item.flag_id}:{item.attempts}"
        seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        generated = await self.peers.generation.GenerateCandidates(
            gpb.GenerateCandidatesRequest(
                input=gpb.GenerationInput(prompt=item.prompt or ""),
                n=s.candidates,
                sampling=gpb.SamplingParams(
                    temperature=s.temperature, max_new_tokens=s.max_new_tokens, seed=seed
                ),
            ),
            timeout=RPC_TIMEOUT_S * 5,
        )
        # The store keeps no empty response; a draft that ended at once is left out.
        drafts = [c for c in generated.candidates if c.text.strip()]
        if not drafts:
            raise FeedbackError("every candidate the generation service wrote was empty")
        reply = await self.peers.preference.SubmitResponses(
            ppb.SubmitResponsesRequest(
                idempotency_key=f"{item.flag_id}:candidates",
                responses=[
                    ppb.ResponseInput(
                        prompt_id=prompt_id,
                        text=c.text,
                        model_version=c.provenance.model_version,
                        generation_params_json=(
                            f'{{"temperature": {s.temperature}, '
                            f'"max_new_tokens": {s.max_new_tokens}, "seed": {seed}}}'
                        ),
                    )
                    for c in drafts
                ],
            ),
            timeout=RPC_TIMEOUT_S,
        )
        ids = [str(x) for x in reply.ids]
        await self.db.run_write(
            lambda session: _save(session, item.flag_id, candidate_ids=",".join(ids))
        )
        return ids

    async def _task(self, item: _Item, prompt_id: str, response_ids: list[str]) -> list[str]:
        from clinalign.preference.v1 import preference_pb2 as ppb

        s = self.settings
        try:
            reply = await self.peers.preference.CreateTasks(
                ppb.CreateTasksRequest(
                    idempotency_key=f"{item.flag_id}:task",
                    batch_id=s.batch_id,
                    tasks=[ppb.TaskSpec(prompt_id=prompt_id, response_ids=response_ids)],
                    overlap=s.overlap,
                    guideline_version=s.guideline_version,
                ),
                timeout=RPC_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND and "guideline" in (err.details() or ""):
                raise FeedbackError(
                    f"guideline version {s.guideline_version!r} is not published in the "
                    "preference store; publish it (PublishGuidelines, ml-engineer or admin) "
                    "or set CLINALIGN_MONITOR_FEEDBACK_GUIDELINE_VERSION; retried each round"
                ) from None
            raise
        return [str(t) for t in reply.task_ids]


def mark_delivered(session: Session, flag_id: str, ids: dict[str, str]) -> None:
    """Ends a flag's feedback ``delivered`` with the ids it produced."""
    _save(session, flag_id, state=DELIVERED, reason="", delivered_at=datetime.now(UTC), **ids)


def get(session: Session, flag_id: str) -> FeedbackRow | None:
    return session.get(FeedbackRow, flag_id)


_STATES = {
    PENDING: pb.FEEDBACK_STATE_PENDING,
    DELIVERED: pb.FEEDBACK_STATE_DELIVERED,
    FAILED: pb.FEEDBACK_STATE_FAILED,
}


@dataclass(frozen=True)
class View:
    """A flag's feedback as the Flag message shows it."""

    state: pb.FeedbackState.ValueType
    reason: str
    refs: list[str]


def view(row: FeedbackRow) -> View:
    refs = [f"prompt:{row.prompt_id}"] if row.prompt_id else []
    refs += [f"response:{row.response_id}"] if row.response_id else []
    refs += [f"candidate:{c}" for c in row.candidate_ids.split(",") if c]
    refs += [f"correction:{row.correction_id}"] if row.correction_id else []
    refs += [f"task:{t}" for t in row.task_ids.split(",") if t]
    return View(_STATES[row.state], row.reason, refs)


def views(session: Session, flag_ids: list[str]) -> dict[str, View]:
    """The feedback of those flags that have any (the confirmed ones)."""
    rows = session.scalars(select(FeedbackRow).where(FeedbackRow.flag_id.in_(flag_ids)))
    return {r.flag_id: view(r) for r in rows}
