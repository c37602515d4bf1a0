"""The clinical lead's dashboard: each annotator's progress and agreement, position bias,
confirmed-flag rates by category and model version over the last days, drift, and which
versions serve. Figures come from the services' own computations (``GetAgreement``,
``GetProgress``, ``GetStats``, ``GetServingState``); plots are SVG drawn on the server
(``charts``), each beside a table of its numbers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clinalign.common.v1 import common_pb2
from clinalign.console import charts
from clinalign.console.app import LEADS, console_of, require, session_of
from clinalign.monitor.v1 import monitor_pb2 as mpb
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.trainer.v1 import trainer_pb2 as tpb

DAYS = 7


def _stamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


async def dashboard(request: Request) -> Response:
    if denied := require(request, *LEADS):
        return denied
    console, session = console_of(request), session_of(request)
    call = console.backend.call
    agreement = await call(session, "preference", "GetAgreement", ppb.GetAgreementRequest())
    annotators = list(agreement.annotators)[:50]
    progress = await asyncio.gather(
        *(
            call(
                session,
                "preference",
                "GetProgress",
                ppb.GetProgressRequest(annotator_id=a.annotator_id),
            )
            for a in annotators
        ),
        return_exceptions=True,
    )
    now = datetime.now(UTC)
    days = [now - timedelta(days=d) for d in range(DAYS, 0, -1)]
    daily = await asyncio.gather(
        *(
            call(
                session,
                "monitor",
                "GetStats",
                mpb.GetStatsRequest(start_time=_stamp(d), end_time=_stamp(d + timedelta(days=1))),
            )
            for d in days
        )
    )
    try:
        serving = await call(session, "trainer", "GetServingState", tpb.GetServingStateRequest())
        states = [
            (common_pb2.ModelKind.Name(s.kind), s.stable.version, s.canary.version, s.canary_share)
            for s in serving.states
        ]
    except grpc.aio.AioRpcError:
        states = []
    today = daily[-1].versions
    rates = {
        (d.strftime("%m-%d"), v.model_version): v
        for d, reply in zip(days, daily, strict=True)
        for v in reply.versions
    }
    return console.render(
        request,
        "dashboard.html",
        report=agreement.report,
        rows=[
            (a, p if not isinstance(p, BaseException) else None)
            for a, p in zip(annotators, progress, strict=True)
        ],
        labels_chart=charts.bars(
            "Labels by annotator", [(a.annotator_id, float(a.labels)) for a in annotators]
        ),
        agreement_chart=charts.bars(
            "Agreement with other annotators",
            [(a.annotator_id, a.agreement) for a in annotators if a.HasField("agreement")],
            maximum=1.0,
        ),
        by_category=[
            (day, version, dict(v.confirmed_flag_rate_by_category))
            for (day, version), v in sorted(rates.items())
            if v.confirmed_flag_rate_by_category
        ],
        flags_chart=charts.bars(
            "Flags per output by day and version",
            [(f"{day} {version}", v.flag_rate) for (day, version), v in sorted(rates.items())],
        ),
        today=today,
        days=DAYS,
        states=states,
    )


def routes() -> list[Route]:
    return [Route("/dashboard", dashboard)]
