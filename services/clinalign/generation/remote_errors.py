"""What a failure of the remote generation server means to our caller: huggingface_hub's
and httpx2's exceptions translated into the service's errors (``common.errors``), each
message saying what to do. See ``remote`` for how huggingface_hub reports each failure.

The caller (an EHR system) learns what kind of failure it was, never the backend's URL or
its own words: those go to the log (with status codes and exception types, never prompt
or output text), where the operator the messages point to reads them.
"""

from __future__ import annotations

import contextlib
import json
import logging

import httpx2
from huggingface_hub.errors import (
    HfHubHTTPError,
    InferenceTimeoutError,
    OfflineModeIsEnabled,
    OverloadedError,
    TextGenerationError,
    ValidationError,
)

from clinalign.common.errors import (
    ClinAlignError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger("clinalign.generation.remote")

URL_SETTING = "CLINALIGN_GENERATION_REMOTE_URL"
MODEL_SETTING = "CLINALIGN_GENERATION_REMOTE_MODEL"
TIMEOUT_SETTING = "CLINALIGN_GENERATION_REMOTE_TIMEOUT_S"
# The exceptions a request's stream raises that ``translate`` turns into our errors.
TRANSLATED = (httpx2.HTTPError, OfflineModeIsEnabled, json.JSONDecodeError)
_MAX_SERVER_MESSAGE = 300


def translate(exc: Exception, *, url: str, timeout_s: float) -> ClinAlignError:
    where = "the inference backend"
    # huggingface_hub raises TGI's typed errors from the HTTP error, when there was one.
    http_error = next((e for e in (exc, exc.__cause__) if isinstance(e, HfHubHTTPError)), None)
    status = http_error.response.status_code if http_error is not None else None
    log.warning(
        "remote generation failed",
        extra={
            "fields": {
                "remote_url": url,
                "error": type(exc).__name__,
                "status": status,
                "server_message": server_message(exc),
            }
        },
    )
    if isinstance(exc, OverloadedError) or status == 429:
        return ResourceExhausted(f"{where} is overloaded; retry with backoff")
    if isinstance(exc, ValidationError) or status in (400, 422):
        return InvalidArgument(
            "input.prompt",
            "the inference backend refused the request (most often the prompt with "
            "max_new_tokens is longer than the model accepts); shorten it",
        )
    if isinstance(exc, TextGenerationError | HfHubHTTPError):
        answered = f" (HTTP {status})" if status is not None else ""
        return Unavailable(f"{where} failed the request{answered}; the operator's logs say why")
    if isinstance(exc, OfflineModeIsEnabled):
        return FailedPrecondition(
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE) "
            "and refuses to call the remote server; unset both"
        )
    if isinstance(exc, json.JSONDecodeError):
        return Unavailable(f"{where} sent an event that is not JSON; check {URL_SETTING}")
    if isinstance(exc, InferenceTimeoutError | httpx2.TimeoutException):
        return Unavailable(
            f"{where} did not answer within {timeout_s:g} s ({TIMEOUT_SETTING}); retry"
        )
    if isinstance(exc, httpx2.ConnectError):
        return Unavailable(
            f"cannot reach {where} ({type(exc).__name__}); check {URL_SETTING} and that "
            "the server is up"
        )
    return Unavailable(f"lost the connection to {where} ({type(exc).__name__}); retry")


def server_message(exc: Exception) -> str:
    """The server's own words about a failure, shortened."""
    message: str | None = None
    if isinstance(exc, HfHubHTTPError):
        message = exc.server_message
        if not message:
            with contextlib.suppress(Exception):  # the body may be unread, or not JSON
                body = exc.response.json()
                error = body.get("error") if isinstance(body, dict) else None
                if isinstance(error, dict):  # OpenAI: {"error": {"message": ...}}
                    error = error.get("message")
                message = error or body.get("message")  # vLLM: {"message": ...}
        message = message or exc.response.reason_phrase or f"HTTP {exc.response.status_code}"
    else:
        message = str(exc)
    message = " ".join(str(message).split())
    if len(message) > _MAX_SERVER_MESSAGE:
        message = message[: _MAX_SERVER_MESSAGE - 1] + "…"
    return message
