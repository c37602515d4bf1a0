"""Sign-in, its callback, and sign-out."""

from __future__ import annotations

import secrets
import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from clinalign.common.errors import ClinAlignError
from clinalign.console.app import console_of, set_session_cookie
from clinalign.console.sessions import (
    COOKIE,
    DEV_ISSUER,
    PENDING_COOKIE,
    Session,
    csrf_ok,
)
from clinalign.console.signin import SignInError


def _safe_next(value: str | None) -> str:
    """Only a path on this site: never an absolute or protocol-relative URL."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def _signed_in(request: Request, session: Session, target: str) -> Response:
    console = console_of(request)
    response = RedirectResponse(_safe_next(target), status_code=303)
    set_session_cookie(response, console.sessions.seal(session), console.sessions.idle_timeout_s)
    response.delete_cookie(PENDING_COOKIE, path="/")
    return response


async def signin(request: Request) -> Response:
    """The sign-in page: the issuer's button, or the development sign-in."""
    console = console_of(request)
    pending = {
        "csrf": secrets.token_urlsafe(32),
        "next": _safe_next(request.query_params.get("next")),
    }
    response = console.render(
        request,
        "signin.html",
        oidc=console.oidc is not None,
        dev_users=console.dev_users if console.oidc is None else {},
        csrf=pending["csrf"],
        next=pending["next"],
        expired=bool(request.query_params.get("expired")),
    )
    response.set_cookie(
        PENDING_COOKIE, console.sessions.seal_pending(pending), max_age=600,
        httponly=True, secure=True, samesite="lax", path="/",
    )  # fmt: skip
    return response


async def dev_signin(request: Request) -> Response:
    """The development-only sign-in as one of the demo clinicians; refused (403) whenever
    an issuer is configured, and for anyone not in the demo list."""
    console = console_of(request)
    if console.oidc is not None or not console.dev_users:
        return console.error(
            request, 403, "Development sign-in is off", "Sign in with your organisation."
        )
    form = await request.form()
    pending = console.sessions.open_pending(request.cookies.get(PENDING_COOKIE)) or {}
    if not pending.get("csrf") or not secrets.compare_digest(
        pending["csrf"], str(form.get("csrf") or "")
    ):
        return console.error(request, 403, "This form has expired", "Reload the page.")
    subject = str(form.get("user") or "")
    role = console.dev_users.get(subject)
    if role is None:
        return console.error(request, 400, "Unknown demo user", "Choose one from the list.")
    roles = (role, "clinician") if role == "clinical-lead" else (role,)
    session = Session(subject=subject, name=subject, roles=roles, issuer=DEV_ISSUER)
    return _signed_in(request, session, pending.get("next", "/"))


async def login(request: Request) -> Response:
    """Off to the issuer: the authorization-code flow with PKCE."""
    console = console_of(request)
    if console.oidc is None:
        return RedirectResponse("/signin", status_code=303)
    pending = console.sessions.open_pending(request.cookies.get(PENDING_COOKIE)) or {}
    try:
        url, state = console.oidc.start(console.public_url.rstrip("/") + "/auth/callback")
    except (SignInError, ClinAlignError, OSError, ValueError):
        return console.error(request, 503, "The sign-in service is unavailable", "Try again.")
    response = RedirectResponse(url, status_code=303)
    state["next"] = _safe_next(pending.get("next"))
    response.set_cookie(
        PENDING_COOKIE, console.sessions.seal_pending(state), max_age=600,
        httponly=True, secure=True, samesite="lax", path="/",
    )  # fmt: skip
    return response


async def callback(request: Request) -> Response:
    console = console_of(request)
    pending = console.sessions.open_pending(request.cookies.get(PENDING_COOKIE))
    code, state = request.query_params.get("code"), request.query_params.get("state")
    if console.oidc is None or pending is None or "verifier" not in pending or not code:
        return console.error(request, 400, "Sign-in did not complete", "Start again.")
    try:
        person, token, expires, name = await console.oidc.finish(pending, code, state or "")
    except (SignInError, ClinAlignError) as err:
        return console.error(request, 401, "Sign-in failed", str(err))
    roles = tuple(sorted(r.value for r in person.roles))
    session = Session(
        subject=person.name,
        name=name,
        roles=roles,
        issuer=console.oidc.config.issuer,
        token=token,
        token_exp=expires or int(time.time()) + console.sessions.max_age_s,
    )
    return _signed_in(request, session, pending.get("next", "/"))


async def signout(request: Request) -> Response:
    console = console_of(request)
    session = console.sessions.open(request.cookies.get(COOKIE))
    form = await request.form()
    if session is not None and not csrf_ok(session, str(form.get("csrf") or "")):
        return console.error(request, 403, "This form has expired", "Reload the page.")
    response = RedirectResponse("/signin?signed_out=1", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def routes() -> list[Route]:
    return [
        Route("/signin", signin),
        Route("/auth/dev", dev_signin, methods=["POST"]),
        Route("/auth/login", login),
        Route("/auth/callback", callback),
        Route("/auth/signout", signout, methods=["POST"]),
    ]
