"""The remote backend: a text-generation-inference (TGI) server, or an OpenAI-compatible
one such as vLLM, called through ``huggingface_hub.AsyncInferenceClient``.

- ``remote_api=tgi``: POST ``<remote_url>`` (TGI's compat route, which streams Server-Sent
  Events when the body says ``"stream": true``) with the prompt rendered by ``render``
  (the model's chat template); every token arrives with its ``special`` flag, the last one
  with ``details`` (finish reason, ``generated_tokens``, ``input_length``).
- ``remote_api=openai``: POST ``<remote_url>/v1/chat/completions`` with the user message;
  the server applies the chat template.

Both always stream; the unary RPC collects the stream. This module holds the backend and
its HTTP clients; ``remote_protocol`` reads each API's stream (stop sequences, finish
reasons) and ``remote_errors`` says what a failure means.

What huggingface_hub (2.x; built on ``httpx2``, not ``httpx``) does that shapes this module:

- A streamed response is entered into the *client's* exit stack and stays open until the
  client is closed; closing the iterator it hands back does not close the HTTP stream. So
  each request gets its own client, closed when the request ends or its consumer goes away
  (which is what makes TGI stop generating). Those clients share one connection pool: a
  new ``httpx2.AsyncClient`` builds an SSL context, about 20 ms of event-loop CPU.
- Given a URL and no token, it sends the machine's Hugging Face token (``HF_TOKEN`` or the
  cached login) to that URL; a ``None`` authorization header removes it.
- ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` make it refuse every request, ours included.
- TGI reports validation and overload errors on the streaming route as one SSE error event
  after HTTP 200; huggingface_hub raises them as ``ValidationError`` / ``OverloadedError``,
  without a status code. An HTTP error status arrives as ``HfHubHTTPError``; a refused
  connection as a bare ``httpx2.ConnectError``; a timeout before the headers as
  ``InferenceTimeoutError``, after them as a bare ``httpx2.ReadTimeout``.

``remote_timeout_s`` bounds connecting and each wait for the next chunk, not the whole
generation. Logs carry the URL, status codes and exception types, never prompt or output
text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import httpx2
from huggingface_hub import AsyncInferenceClient, constants, get_async_session

from clinalign.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from clinalign.generation.backend import Event, Generated, ModelInfo
from clinalign.generation.config import GenerationSettings
from clinalign.generation.params import Sampling
from clinalign.generation.remote_errors import (
    MODEL_SETTING,
    TIMEOUT_SETTING,
    TRANSLATED,
    URL_SETTING,
    translate,
)
from clinalign.generation.remote_protocol import (
    Clock,
    events,
    openai_pieces,
    tgi_pieces,
    tgi_sampling,
)

__all__ = [
    "MODEL_SETTING",
    "TIMEOUT_SETTING",
    "URL_SETTING",
    "RemoteBackend",
    "tgi_sampling",
]

log = logging.getLogger("clinalign.generation.remote")

# huggingface_hub drops headers whose value is None, after adding the implicit HF token.
_NO_HF_TOKEN: dict[str, Any] = {"authorization": None}


class _RequestClient(AsyncInferenceClient):
    """A client for one request over the backend's shared connection pool: closing it
    closes the request's HTTP stream (see the module notes), not the pool. Should a later
    huggingface_hub rename this hook, each client opens and closes its own pool: slower,
    still correct."""

    def __init__(self, pool: httpx2.AsyncClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool = pool

    async def _get_async_client(self) -> httpx2.AsyncClient:
        return self._pool


class RemoteBackend:
    """Serves a model that a TGI or OpenAI-compatible server at ``remote_url`` holds."""

    def __init__(
        self,
        settings: GenerationSettings,
        *,
        name: str,
        version: str,
        render: Callable[[str], str] | None = None,
    ) -> None:
        self.settings = settings
        self.url = settings.remote_url.rstrip("/")
        self.name, self.version = name, version
        self.render = render  # tgi only; None sends the user message as it is
        self.info = ModelInfo(name, version, uri=settings.remote_url, weights_hash="")
        self.model = settings.remote_model  # openai: the `model` sent; start() fills it in
        self.max_stop_sequences: int | None = None  # tgi: from /info
        self._pool: httpx2.AsyncClient | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> ModelInfo:
        if not self.url.startswith(("http://", "https://")):
            # Anything else huggingface_hub takes for a Hub model id, and would send the
            # prompt to Hugging Face's hosted inference.
            raise FailedPrecondition(
                f"{URL_SETTING} must be the server's http(s) URL, e.g. http://tgi:8080; "
                f"got {self.settings.remote_url!r}"
            )
        if constants.is_offline_mode():
            raise FailedPrecondition(
                "HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set, and huggingface_hub then "
                f"refuses every request, including those to {URL_SETTING}; unset both for "
                "the generation service when CLINALIGN_GENERATION_BACKEND=remote"
            )
        async with httpx2.AsyncClient(timeout=self.settings.remote_timeout_s) as http:
            if self.settings.remote_api == "tgi":
                self.info = await self._check_tgi(http)
            else:
                self.info = await self._check_openai(http)
        self._pool = get_async_session()
        log.info(
            "remote backend ready",
            extra={
                "fields": {
                    "remote_url": self.url,
                    "remote_api": self.settings.remote_api,
                    "weights_hash": self.info.weights_hash,
                }
            },
        )
        return self.info

    async def _get(self, http: httpx2.AsyncClient, url: str) -> httpx2.Response:
        try:
            response = await http.get(url)
        except httpx2.HTTPError as exc:
            raise Unavailable(
                f"cannot reach the remote generation server at {url} ({type(exc).__name__}); "
                f"check {URL_SETTING} and that the server is up"
            ) from exc
        if response.status_code != 200:
            raise Unavailable(
                f"the remote generation server at {url} answered HTTP {response.status_code} "
                f"(TGI answers 503 while loading or unhealthy); check {URL_SETTING} and the "
                "server's logs"
            )
        return response

    async def _check_tgi(self, http: httpx2.AsyncClient) -> ModelInfo:
        await self._get(http, f"{self.url}/health")
        info = _json_object(await self._get(http, f"{self.url}/info"))
        model_id = str(info.get("model_id") or "")
        sha = info.get("model_sha")  # null when TGI serves a local directory
        max_stop = info.get("max_stop_sequences")
        self.max_stop_sequences = max_stop if isinstance(max_stop, int) else None
        weights = f"tgi:{model_id}@{sha}" if model_id and sha else f"remote:{model_id or self.url}"
        return ModelInfo(
            self.name, self.version, self.settings.remote_url, weights, base_model=model_id
        )

    async def _check_openai(self, http: httpx2.AsyncClient) -> ModelInfo:
        base = self.url if self.url.endswith("/v1") else f"{self.url}/v1"
        listing = _json_object(await self._get(http, f"{base}/models"))
        served = [str(m.get("id")) for m in listing.get("data") or [] if isinstance(m, dict)]
        if self.model and served and self.model not in served:
            raise FailedPrecondition(
                f"{MODEL_SETTING}={self.model!r} is not served by {self.url}; it serves "
                f"{', '.join(served)}"
            )
        if not self.model:
            if not served:
                raise FailedPrecondition(f"{base}/models lists no model; set {MODEL_SETTING}")
            self.model = served[0]
        return ModelInfo(
            self.name,
            self.version,
            self.settings.remote_url,
            f"remote:{self.model}",
            base_model=self.model,
        )

    @property
    def queue_depth(self) -> int:
        return self._in_flight

    async def close(self) -> None:
        self._closing = True
        if self._in_flight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.remote_timeout_s):
                    await self._idle.wait()
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    # -- generation --------------------------------------------------------------------

    async def stream(
        self, prompt: str, sampling: Sampling, *, deltas: bool = True
    ) -> AsyncGenerator[Event, None]:
        self._check_stop_count(sampling)
        pool = self._admit()
        clock = Clock()
        try:
            async with _RequestClient(
                pool,
                model=self.url,
                timeout=self.settings.remote_timeout_s,
                headers=_NO_HF_TOKEN,
            ) as client:
                if self.settings.remote_api == "tgi":
                    pieces = tgi_pieces(
                        client, prompt, sampling, clock, url=self.url, render=self.render
                    )
                else:
                    pieces = openai_pieces(
                        client, prompt, sampling, clock, url=self.url, model=self.model
                    )
                stream = events(pieces, sampling, clock, info=self.info, url=self.url)
                async with aclosing(pieces), aclosing(stream):
                    try:
                        async for event in stream:
                            if deltas or isinstance(event, Generated):
                                yield event
                    except TRANSLATED as exc:
                        raise translate(
                            exc, url=self.url, timeout_s=self.settings.remote_timeout_s
                        ) from exc
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def _check_stop_count(self, sampling: Sampling) -> None:
        limit = self.max_stop_sequences
        if limit is not None and len(sampling.stop) > limit:
            raise InvalidArgument(
                "sampling.stop",
                f"the remote TGI server accepts at most {limit} stop sequences "
                f"(its --max-stop-sequences), got {len(sampling.stop)}",
            )

    def _admit(self) -> httpx2.AsyncClient:
        if self._pool is None and not self._closing:
            raise FailedPrecondition("the remote generation backend has not been started")
        if self._closing or self._pool is None:
            raise Unavailable("the generation service is shutting down; retry")
        if self._in_flight >= self.settings.max_queue:
            raise ResourceExhausted(
                f"generation queue is full ({self.settings.max_queue} requests in flight to "
                "the remote server); retry with backoff"
            )
        self._in_flight += 1
        self._idle.clear()
        return self._pool


def _json_object(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
