"""The console's web application (Starlette): server-rendered pages (Jinja2) with
progressive enhancement, one first-party script for keyboard shortcuts, every asset served
from the package (nothing from a CDN).

Why this stack: the pages are forms and tables that a clinician works through quickly;
server rendering keeps all logic on the server, where the person's token never leaves,
works without script, is accessible by default (native form controls), and tests through
plain HTTP as well as in a browser. Starlette is a small, well-kept ASGI toolkit (it is
what FastAPI is built on) served by uvicorn.

Every response carries the security headers (a Content-Security-Policy without inline
script or style, no framing, no referrer, no caching); every page but sign-in needs a
session (``sessions``), and every POST its CSRF token. The pages live in ``pages``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc.aio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from clinalign.common.auth import Role
from clinalign.common.errors import ClinAlignError
from clinalign.common.web import healthz
from clinalign.console import metrics
from clinalign.console.backend import HTTP_OF, Backend
from clinalign.console.sessions import COOKIE, Session, Sessions, csrf_ok
from clinalign.console.signin import OidcClient

HERE = Path(__file__).parent
log = logging.getLogger("clinalign.console")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
MAX_BODY_BYTES = 256 * 1024  # the largest form: a corrected answer of 20,000 characters
PUBLIC = ("/signin", "/auth/", "/static/", "/healthz")
PEOPLE = (Role.CLINICIAN.value, Role.CLINICAL_LEAD.value)
LEADS = (Role.CLINICAL_LEAD.value, Role.ADMIN.value)


@dataclass
class Console:
    """What every page needs: the sessions, the services, the sign-in methods."""

    sessions: Sessions
    backend: Backend
    oidc: OidcClient | None
    dev_users: dict[str, str]  # subject -> role; empty when the dev sign-in is off
    public_url: str
    page_size: int
    templates: Jinja2Templates = field(default_factory=lambda: templates())

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        session: Session | None = getattr(request.state, "session", None)
        return self.templates.TemplateResponse(
            request, name, {"session": session, "leads": LEADS, **context}, status_code=status
        )

    def error(self, request: Request, status: int, title: str, detail: str = "") -> Response:
        return self.render(request, "error.html", status, title=title, detail=detail)


def templates() -> Jinja2Templates:
    """The pages' templates, with the enum names they show."""
    from clinalign.common.v1 import common_pb2
    from clinalign.monitor.v1 import monitor_pb2

    def pretty(name: str, prefix: str) -> str:
        return name.removeprefix(prefix).replace("_", " ").lower()

    found = Jinja2Templates(directory=str(HERE / "templates"))
    found.env.globals.update(
        category_name=lambda v: pretty(common_pb2.ErrorCategory.Name(v), "ERROR_CATEGORY_"),
        severity_name=lambda v: pretty(monitor_pb2.Severity.Name(v), "SEVERITY_"),
        status_name=lambda v: pretty(monitor_pb2.FlagStatus.Name(v), "FLAG_STATUS_"),
    )
    return found


def console_of(request: Request) -> Console:
    state: Console = request.app.state.console
    return state


def session_of(request: Request) -> Session:
    session: Session = request.state.session
    return session


class Guard(BaseHTTPMiddleware):
    """Security headers; the session (sliding idle timeout); sign-in required; CSRF on
    every POST; gRPC refusals as pages; request metrics by route template."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        started = time.perf_counter()
        console = console_of(request)
        path = request.url.path
        session = console.sessions.open(request.cookies.get(COOKIE))
        request.state.session = session
        if session is None and not path.startswith(PUBLIC) and path != "/favicon.ico":
            response: Response = RedirectResponse(
                f"/signin?next={quote(path, safe='/')}", status_code=303
            )
        elif int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            response = console.error(request, 413, "That form is too large", "")
        elif request.method == "POST" and session is not None and not path.startswith("/auth/"):
            form = await request.form()
            request.state.form = form
            if not csrf_ok(session, str(form.get("csrf") or "")):
                response = console.error(
                    request, 403, "This form has expired", "Reload the page and try again."
                )
            else:
                response = await self._handled(request, call_next)
        else:
            response = await self._handled(request, call_next)
        cookies = response.headers.getlist("set-cookie")
        if session is not None and not any(c.startswith(COOKIE + "=") for c in cookies):
            fresh = console.sessions.seal(session.touched(int(time.time())))
            set_session_cookie(response, fresh, console.sessions.idle_timeout_s)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        elapsed = time.perf_counter() - started
        response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.1f}"
        metrics.observe(request, response.status_code, elapsed)
        return response

    async def _handled(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        console = console_of(request)
        try:
            return await call_next(request)
        except grpc.aio.AioRpcError as err:
            status, title = HTTP_OF.get(err.code(), (502, "A service failed"))
            if status == 401:
                return RedirectResponse("/signin?expired=1", status_code=303)
            log.warning("service call refused: %s", err.code().name)
            shown = err.details() if status < 500 else ""
            return console.error(request, status, title, shown or "")
        except ClinAlignError as err:
            return console.error(request, 400, "That was not accepted", str(err))


def set_session_cookie(response: Response, value: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE, value, max_age=max_age, httponly=True, secure=True, samesite="lax", path="/"
    )


def require(request: Request, *roles: str) -> Response | None:
    """A 403 page unless the session holds one of ``roles``."""
    if session_of(request).has(*roles):
        return None
    return console_of(request).error(
        request, 403, "Your role may not open this page", f"It needs: {', '.join(roles)}."
    )


async def home(request: Request) -> Response:
    session = session_of(request)
    target = "/dashboard" if session.has(*LEADS) and not session.has(*PEOPLE) else "/label"
    return RedirectResponse(target, status_code=303)


def build_app(console: Console) -> Starlette:
    from clinalign.console import pages, signin_pages

    routes = [
        Route("/", home),
        Route("/healthz", healthz),
        *signin_pages.routes(),
        *pages.routes(),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Guard)])
    app.state.console = console
    return app
