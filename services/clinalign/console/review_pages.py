"""Production review: recent outputs filtered by model version, task, date and flag
state, each with its provenance; flagging one (category, severity, comment, correction);
and the review queue, where a clinician confirms or dismisses others' flags with a reason.

Only de-identified text reaches the console: the monitor stores outputs de-identified."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from clinalign.common.errors import InvalidArgument
from clinalign.console import taxonomy
from clinalign.console.app import PEOPLE, console_of, require, session_of
from clinalign.monitor.v1 import monitor_pb2 as mpb

FLAG_STATES = {
    "": mpb.FLAG_STATE_UNSPECIFIED,
    "unflagged": mpb.FLAG_STATE_UNFLAGGED,
    "flagged": mpb.FLAG_STATE_FLAGGED,
    "open": mpb.FLAG_STATE_OPEN,
    "confirmed": mpb.FLAG_STATE_CONFIRMED,
    "dismissed": mpb.FLAG_STATE_DISMISSED,
}
TASKS = ("free_text", "patient_question", "summary", "discharge_instructions")
DRAFT_NOTICE = "AI-generated draft: a clinician must review it before it is used in care."


def _day(value: str, field: str, end: bool = False) -> Timestamp | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidArgument(field, "must be a date, YYYY-MM-DD") from None
    stamp = Timestamp()
    stamp.FromDatetime(day + timedelta(days=1) if end else day)
    return stamp


async def outputs(request: Request) -> Response:
    if denied := require(request, *PEOPLE):
        return denied
    console, session = console_of(request), session_of(request)
    q = request.query_params
    state = q.get("flag_state", "")
    if state not in FLAG_STATES:
        raise InvalidArgument("flag_state", "is not a flag state")
    filters = {
        "model_version": q.get("model_version", "")[:64],
        "task": q.get("task", "") if q.get("task", "") in TASKS else "",
        "since": q.get("since", ""),
        "until": q.get("until", ""),
        "flag_state": state,
    }
    request_pb = mpb.ListOutputsRequest(
        model_version=filters["model_version"],
        task=filters["task"],
        flag_state=FLAG_STATES[state],
        page_size=console.page_size,
        page_token=q.get("page", "")[:512],
    )
    if since := _day(filters["since"], "since"):
        request_pb.start_time.CopyFrom(since)
    if until := _day(filters["until"], "until", end=True):
        request_pb.end_time.CopyFrom(until)
    reply = await console.backend.call(session, "monitor", "ListOutputs", request_pb)
    return console.render(
        request,
        "outputs.html",
        outputs=reply.outputs,
        next_page=reply.next_page_token,
        filters=filters,
        flag_states=[s for s in FLAG_STATES if s],
        tasks=TASKS,
    )


async def output(request: Request) -> Response:
    if denied := require(request, *PEOPLE):
        return denied
    console, session = console_of(request), session_of(request)
    reply = await console.backend.call(
        session,
        "monitor",
        "GetOutput",
        mpb.GetOutputRequest(output_id=request.path_params["output_id"]),
    )
    return console.render(
        request,
        "output.html",
        item=reply.output,
        flags=reply.flags,
        categories=taxonomy.CATEGORIES,
        severities=taxonomy.SEVERITIES,
        notice=DRAFT_NOTICE,
        flagged=request.query_params.get("flagged") == "1",
    )


async def flag(request: Request) -> Response:
    if denied := require(request, *PEOPLE):
        return denied
    console, session = console_of(request), session_of(request)
    form: FormData = request.state.form
    output_id = request.path_params["output_id"]
    await console.backend.call(
        session,
        "monitor",
        "FlagOutput",
        mpb.FlagOutputRequest(
            output_id=output_id,
            category=taxonomy.category(str(form.get("category") or ""), "category"),  # type: ignore[arg-type]
            severity=taxonomy.severity(str(form.get("severity") or ""), "severity"),  # type: ignore[arg-type]
            comment=str(form.get("comment") or "")[:2000],
            corrected_text=str(form.get("corrected_text") or "").strip()[:20000],
        ),
    )
    return RedirectResponse(f"/outputs/{output_id}?flagged=1", status_code=303)


async def review(request: Request) -> Response:
    """Open flags raised by others, highest severity first, each with its output."""
    if denied := require(request, *PEOPLE):
        return denied
    console, session = console_of(request), session_of(request)
    reply = await console.backend.call(
        session,
        "monitor",
        "ListFlags",
        mpb.ListFlagsRequest(status=mpb.FLAG_STATUS_OPEN, page_size=console.page_size),
    )
    items = []
    for f in reply.flags:
        if f.flagged_by == session.subject:
            continue  # a flag is reviewed by someone other than who raised it
        detail = await console.backend.call(
            session, "monitor", "GetOutput", mpb.GetOutputRequest(output_id=f.output_id)
        )
        items.append((f, detail.output, [g for g in detail.flags if g.id != f.id]))
    return console.render(
        request, "review.html", items=items, resolved=request.query_params.get("resolved")
    )


async def resolve(request: Request) -> Response:
    if denied := require(request, *PEOPLE):
        return denied
    console, session = console_of(request), session_of(request)
    form: FormData = request.state.form
    decision = str(form.get("decision") or "")
    resolution = {"confirm": mpb.RESOLUTION_CONFIRM, "dismiss": mpb.RESOLUTION_DISMISS}.get(
        decision
    )
    if resolution is None:
        raise InvalidArgument("decision", "confirm or dismiss")
    await console.backend.call(
        session,
        "monitor",
        "ResolveFlag",
        mpb.ResolveFlagRequest(
            flag_id=request.path_params["flag_id"],
            resolution=resolution,
            reason=str(form.get("reason") or "")[:2000],
        ),
    )
    return RedirectResponse(f"/review?resolved={decision}", status_code=303)


def routes() -> list[Route]:
    return [
        Route("/outputs", outputs),
        Route("/outputs/{output_id:str}", output),
        Route("/outputs/{output_id:str}/flag", flag, methods=["POST"]),
        Route("/review", review),
        Route("/review/{flag_id:str}", resolve, methods=["POST"]),
    ]
