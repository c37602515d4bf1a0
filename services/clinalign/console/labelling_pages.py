"""Labelling: the clinician's next task from the queue, two answers side by side (their
left/right order drawn per task and person, and recorded with the label so position bias
can be measured), the guidelines the task follows, left / right / tie or skip by mouse or
keyboard, optional error annotations per answer (category, severity, the words concerned),
an optional corrected answer, and progress.

Submitting is idempotent: the key is derived from the person and the task, so a double
click or a re-sent form after the back button is the same request, answered as a replay;
a different label for a task already labelled is refused by the store (shown as a 409).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import grpc
import grpc.aio
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from clinalign.common.auth import annotator_id
from clinalign.common.errors import InvalidArgument
from clinalign.console import taxonomy
from clinalign.console.app import PEOPLE, console_of, require, session_of
from clinalign.console.sessions import Session
from clinalign.preference.v1 import preference_pb2 as ppb

CHOICES = {"left": ppb.PREFERENCE_A, "right": ppb.PREFERENCE_B, "tie": ppb.PREFERENCE_TIE}
MAX_QUOTE = 2000


def key(session: Session, task_id: str, what: str = "label") -> str:
    digest = hashlib.sha256(f"{session.issuer}\x1f{session.subject}\x1f{task_id}".encode())
    return f"console-{what}-{digest.hexdigest()[:40]}"


def shown_order(task: ppb.Task, session: Session) -> list[ppb.Response]:
    """The task's answers in the order this person sees them: drawn per task and person
    (the same on every reload, so the back button shows what was labelled)."""
    responses = list(task.responses)
    draw = hashlib.sha256(f"{task.id}\x1f{session.subject}".encode()).digest()[0]
    if len(responses) == 2 and draw & 1:
        responses.reverse()
    return responses


async def _progress(request: Request) -> ppb.GetProgressResponse | None:
    console, session = console_of(request), session_of(request)
    try:
        reply: ppb.GetProgressResponse = await console.backend.call(
            session, "preference", "GetProgress", ppb.GetProgressRequest()
        )
    except grpc.aio.AioRpcError:
        return None
    return reply


async def label(request: Request) -> Response:
    if denied := require(request, *PEOPLE):
        return denied
    console, session = console_of(request), session_of(request)
    # the task and the progress at once: two calls, one wait (_progress never raises)
    task_call = console.backend.call(session, "preference", "NextTask", ppb.NextTaskRequest())
    try:
        reply, progress = await asyncio.gather(task_call, _progress(request))
    except grpc.aio.AioRpcError as err:
        if err.code() is grpc.StatusCode.FAILED_PRECONDITION:
            return console.render(request, "register.html", detail=err.details())
        raise
    if not reply.HasField("task"):
        return console.render(
            request,
            "label_done.html",
            progress=progress,
            already=request.query_params.get("already") == "1",
        )
    task = reply.task
    return console.render(
        request,
        "label.html",
        task=task,
        shown=shown_order(task, session),
        categories=taxonomy.CATEGORIES,
        severities=taxonomy.SEVERITIES,
        progress=progress,
        saved=request.query_params.get("saved") == "1",
        already=request.query_params.get("already") == "1",
    )


def _annotations(
    form: FormData, ids: list[str], texts: dict[str, str], context: ppb.LabelContext
) -> list[ppb.ErrorAnnotation]:
    out = []
    for i, response_id in enumerate(ids):
        chosen = str(form.get(f"category{i}") or "")
        if not chosen:
            continue
        annotation = ppb.ErrorAnnotation(
            context=context,
            response_id=response_id,
            category=taxonomy.category(chosen, f"category{i}"),  # type: ignore[arg-type]
            severity=taxonomy.severity(str(form.get(f"severity{i}") or ""), f"severity{i}"),  # type: ignore[arg-type]
            comment=str(form.get(f"comment{i}") or "")[:2000],
        )
        quote = str(form.get(f"span{i}") or "").strip()[:MAX_QUOTE]
        if quote:
            start = texts.get(response_id, "").find(quote)
            if start < 0:
                raise InvalidArgument(f"span{i}", "the quoted words are not in that answer")
            annotation.span_start, annotation.span_end = start, start + len(quote)
        out.append(annotation)
    return out


def _label(
    form: FormData, ids: list[str], context: ppb.LabelContext, task_id: str
) -> dict[str, Any]:
    if len(ids) == 2:
        choice = str(form.get("choice") or "")
        if choice not in CHOICES:
            raise InvalidArgument("choice", "choose left, right or tie")
        preference = CHOICES[choice]
        return {
            "comparison": ppb.Comparison(
                context=context,
                response_a_id=ids[0],
                response_b_id=ids[1],
                preference=preference,
                strength=0.0 if preference == ppb.PREFERENCE_TIE else 1.0,
                task_id=task_id,
            )
        }
    ranks = {}
    for i, response_id in enumerate(ids):
        try:
            ranks[response_id] = int(str(form.get(f"rank{i}") or ""))
        except ValueError:
            raise InvalidArgument(f"rank{i}", "give every answer a rank") from None
    if sorted(ranks.values()) != list(range(1, len(ids) + 1)):
        raise InvalidArgument("rank", f"ranks must be 1 to {len(ids)}, each once")
    ordered = sorted(ids, key=ranks.__getitem__)
    return {"ranking": ppb.Ranking(context=context, response_ids=ordered, task_id=task_id)}


async def _texts(request: Request, task_id: str) -> dict[str, str]:
    """The answers' texts of the person's open task (to place a quoted span)."""
    console, session = console_of(request), session_of(request)
    reply = await console.backend.call(session, "preference", "NextTask", ppb.NextTaskRequest())
    if not reply.HasField("task") or reply.task.id != task_id:
        return {}
    return {r.id: r.text for r in reply.task.responses}


async def submit(request: Request) -> Response:
    if denied := require(request, *PEOPLE):
        return denied
    console, session = console_of(request), session_of(request)
    form: FormData = request.state.form
    task_id = request.path_params["task_id"]
    ids = [str(v) for v in form.getlist("shown")][:8]
    if len(ids) < 2:
        raise InvalidArgument("shown", "the answers shown are missing; reload the page")
    context = ppb.LabelContext(guideline_version=str(form.get("guideline_version") or ""))
    texts: dict[str, str] = {}
    if any(form.get(f"span{i}") for i in range(len(ids))):
        texts = await _texts(request, task_id)
        if not texts:  # no longer open for them: submitted (or skipped) already
            return RedirectResponse("/label?already=1", status_code=303)
    annotations = _annotations(form, ids, texts, context)
    corrected = str(form.get("corrected_text") or "").strip()
    corrects = str(form.get("corrects") or "")
    if corrected and corrects not in ids:
        raise InvalidArgument("corrects", "say which answer the correction replaces")
    try:
        await console.backend.call(
            session,
            "preference",
            "SubmitTask",
            ppb.SubmitTaskRequest(
                idempotency_key=key(session, task_id),
                task_id=task_id,
                annotations=annotations,
                presented_response_ids=ids,
                **_label(form, ids, context, task_id),
            ),
        )
    except grpc.aio.AioRpcError as err:
        if (err.details() or "").startswith("idempotency_key"):  # answered before, otherwise
            return console.error(
                request, 409, "That task was already submitted", "Your first answer stands."
            )
        raise
    if corrected:
        await console.backend.call(
            session,
            "preference",
            "SubmitCorrections",
            ppb.SubmitCorrectionsRequest(
                idempotency_key=key(session, task_id, "correction"),
                corrections=[
                    ppb.Correction(context=context, response_id=corrects, corrected_text=corrected)
                ],
            ),
        )
    return RedirectResponse("/label?saved=1", status_code=303)


async def skip(request: Request) -> Response:
    if denied := require(request, *PEOPLE):
        return denied
    console, session = console_of(request), session_of(request)
    form: FormData = request.state.form
    await console.backend.call(
        session,
        "preference",
        "SkipTask",
        ppb.SkipTaskRequest(
            task_id=request.path_params["task_id"], reason=str(form.get("reason") or "")[:500]
        ),
    )
    return RedirectResponse("/label", status_code=303)


async def register(request: Request) -> Response:
    """A clinician's first visit: they register as an annotator (their clinical role and
    specialty), linked to themselves under a pseudonymous id."""
    if denied := require(request, *PEOPLE):
        return denied
    console, session = console_of(request), session_of(request)
    form: FormData = request.state.form
    await console.backend.call(
        session,
        "preference",
        "RegisterAnnotator",
        ppb.RegisterAnnotatorRequest(
            annotator=ppb.Annotator(
                id=annotator_id(session.subject),
                role=str(form.get("role") or "")[:64],
                specialty=str(form.get("specialty") or "")[:64],
            )
        ),
    )
    return RedirectResponse("/label", status_code=303)


def routes() -> list[Route]:
    return [
        Route("/label", label),
        Route("/label/register", register, methods=["POST"]),
        Route("/label/{task_id:str}", submit, methods=["POST"]),
        Route("/label/{task_id:str}/skip", skip, methods=["POST"]),
    ]
