"""The remote backend: a text-generation-inference (TGI) server, or an OpenAI-compatible
one such as vLLM, called through ``huggingface_hub.AsyncInferenceClient``.

- ``remote_api=tgi``: POST ``<remote_url>`` (TGI's compat route, which streams Server-Sent
  Events when the body says ``"stream": true``) with the prompt rendered by ``render``
  (the model's chat template); every token arrives with its ``special`` flag, the last one
  with ``details`` (finish reason, ``generated_tokens``, ``input_length``).
- ``remote_api=openai``: POST ``<remote_url>/v1/chat/completions`` with the user message;
  the server applies the chat template.

Both always stream; the unary RPC collects the stream. Stop sequences are cut locally too,
and text that could be the start of one is held back, so the deltas never show a stop
sequence and always add up to the final text.

Finish reasons. TGI: ``length`` -> LENGTH, ``eos_token`` -> EOS, ``stop_sequence`` -> STOP.
OpenAI: ``length`` -> LENGTH; ``stop`` -> STOP when the server names the matched string
(vLLM's ``stop_reason``) or the text contained one, else EOS (OpenAI's ``stop`` covers
both); anything else (vLLM's ``abort``) is a failed generation: UNAVAILABLE.

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
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx2
from huggingface_hub import (
    AsyncInferenceClient,
    ChatCompletionInputStreamOptions,
    constants,
    get_async_session,
)
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
from clinalign.generation.backend import EOS, LENGTH, STOP, Delta, Event, Generated, ModelInfo
from clinalign.generation.config import GenerationSettings
from clinalign.generation.params import Sampling

log = logging.getLogger("clinalign.generation.remote")

URL_SETTING = "CLINALIGN_GENERATION_REMOTE_URL"
MODEL_SETTING = "CLINALIGN_GENERATION_REMOTE_MODEL"
TIMEOUT_SETTING = "CLINALIGN_GENERATION_REMOTE_TIMEOUT_S"
_TGI_FINISH = {"length": LENGTH, "eos_token": EOS, "stop_sequence": STOP}
_MAX_SERVER_MESSAGE = 300
# huggingface_hub drops headers whose value is None, after adding the implicit HF token.
_NO_HF_TOKEN: dict[str, Any] = {"authorization": None}


@dataclass
class _Piece:
    """One server event, the same for both APIs."""

    text: str = ""  # visible text; special tokens give ""
    tokens: int = 0  # generated tokens it accounts for
    finish: str | None = None  # EOS | LENGTH | STOP, on the event that ends the generation
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class _Clock:
    """Local timings of one request, from admission."""

    admitted: float = field(default_factory=time.perf_counter)
    headers: float | None = None
    first_token: float | None = None


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
        clock = _Clock()
        try:
            async with _RequestClient(
                pool,
                model=self.url,
                timeout=self.settings.remote_timeout_s,
                headers=_NO_HF_TOKEN,
            ) as client:
                if self.settings.remote_api == "tgi":
                    pieces = self._tgi_pieces(client, prompt, sampling, clock)
                else:
                    pieces = self._openai_pieces(client, prompt, sampling, clock)
                events = self._events(pieces, sampling, clock)
                async with aclosing(pieces), aclosing(events):
                    try:
                        async for event in events:
                            if deltas or isinstance(event, Generated):
                                yield event
                    except (httpx2.HTTPError, OfflineModeIsEnabled, json.JSONDecodeError) as exc:
                        raise self._translate(exc) from exc
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

    async def _events(
        self, pieces: AsyncIterator[_Piece], sampling: Sampling, clock: _Clock
    ) -> AsyncGenerator[Event, None]:
        """Deltas as text arrives (held back while it could be a stop sequence's start),
        then the result."""
        stops = sampling.stop
        longest = max((len(s) for s in stops), default=0)
        text, emitted, tokens = "", 0, 0
        finish: str | None = None
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        async for piece in pieces:
            if piece.tokens and clock.first_token is None:
                clock.first_token = time.perf_counter()
            tokens += piece.tokens
            finish = piece.finish or finish
            if piece.prompt_tokens is not None:
                prompt_tokens = piece.prompt_tokens
            if piece.completion_tokens is not None:
                completion_tokens = piece.completion_tokens
            if not piece.text:
                continue
            search_from = max(0, len(text) - longest + 1)
            text += piece.text
            cut = _find_stop(text, stops, search_from)
            if cut is not None:
                # TGI returns the stop sequence as part of the text; a server that ignores
                # `stop` is stopped here (leaving the loop closes its stream).
                text, finish = text[:cut], STOP
                break
            safe = len(text) - _held_back(text, stops)
            if safe > emitted:
                yield Delta(text[emitted:safe], tokens)
                emitted = safe
        if finish is None:
            raise Unavailable(
                f"the remote generation server at {self.url} ended the stream before the "
                "generation finished; retry"
            )
        if len(text) > emitted:
            yield Delta(text[emitted:], tokens)
        end = time.perf_counter()
        yield Generated(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=tokens if completion_tokens is None else completion_tokens,
            model=self.info,
            queue_s=(clock.headers or end) - clock.admitted,
            ttft_s=(clock.first_token or end) - clock.admitted,
            duration_s=end - clock.admitted,
        )

    async def _tgi_pieces(
        self, client: AsyncInferenceClient, prompt: str, sampling: Sampling, clock: _Clock
    ) -> AsyncGenerator[_Piece, None]:
        inputs = self.render(prompt) if self.render is not None else prompt
        stream = await client.text_generation(
            inputs,
            stream=True,
            details=True,
            # The compat route defaults to true for text-generation models, which would
            # put the prompt in front of the last event's generated_text.
            return_full_text=False,
            max_new_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop),
            **tgi_sampling(sampling),
        )
        clock.headers = time.perf_counter()
        async for out in stream:
            token = out.token
            piece = _Piece(text="" if token.special else token.text, tokens=1)
            if out.details is not None:
                piece.finish = _TGI_FINISH.get(out.details.finish_reason)
                if piece.finish is None:
                    raise Unavailable(
                        f"the remote TGI server at {self.url} ended the generation with the "
                        f"unknown finish_reason {out.details.finish_reason!r}"
                    )
                piece.prompt_tokens = out.details.input_length  # None before TGI 2.x
                piece.completion_tokens = out.details.generated_tokens
            yield piece

    async def _openai_pieces(
        self, client: AsyncInferenceClient, prompt: str, sampling: Sampling, clock: _Clock
    ) -> AsyncGenerator[_Piece, None]:
        top_k = sampling.top_k if not sampling.greedy else 0
        stream = await client.chat_completion(
            messages=[{"role": "user", "content": prompt}],
            model=self.model or None,
            stream=True,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,  # 0 is greedy here
            top_p=sampling.top_p if sampling.top_p < 1.0 else None,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            stream_options=ChatCompletionInputStreamOptions(include_usage=True),
            # top_k is not OpenAI's; vLLM and TGI read it from the body.
            extra_body={"top_k": top_k} if top_k else None,
        )
        clock.headers = time.perf_counter()
        async for chunk in stream:
            piece = _Piece()
            if chunk.usage is not None:
                piece.prompt_tokens = chunk.usage.prompt_tokens
                piece.completion_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices or []:
                if choice.index not in (0, None):
                    continue
                content = choice.delta.content if choice.delta is not None else None
                if content:
                    piece.text, piece.tokens = content, 1
                if choice.finish_reason:
                    piece.finish = self._openai_finish(
                        choice.finish_reason, choice.get("stop_reason")
                    )
            yield piece

    def _openai_finish(self, reason: str, stop_reason: object) -> str:
        if reason in _TGI_FINISH:  # TGI's Messages API may use its own words
            return _TGI_FINISH[reason]
        if reason == "stop":
            # vLLM names the matched stop string (an int is a stop token id: an EOS).
            return STOP if isinstance(stop_reason, str) else EOS
        raise Unavailable(
            f"the remote generation server at {self.url} ended the generation with "
            f"finish_reason {reason!r}; retry"
        )

    # -- errors ------------------------------------------------------------------------

    def _translate(self, exc: Exception) -> ClinAlignError:
        where = f"the remote generation server at {self.url}"
        # huggingface_hub raises TGI's typed errors from the HTTP error, when there was one.
        http_error = next((e for e in (exc, exc.__cause__) if isinstance(e, HfHubHTTPError)), None)
        status = http_error.response.status_code if http_error is not None else None
        log.warning(
            "remote generation failed",
            extra={
                "fields": {"remote_url": self.url, "error": type(exc).__name__, "status": status}
            },
        )
        if isinstance(exc, OverloadedError) or status == 429:
            return ResourceExhausted(f"{where} is overloaded; retry with backoff")
        if isinstance(exc, ValidationError) or status in (400, 422):
            return InvalidArgument("input.prompt", _server_message(exc))
        if isinstance(exc, TextGenerationError | HfHubHTTPError):
            answered = f" (HTTP {status})" if status is not None else ""
            return Unavailable(f"{where} failed the request{answered}: {_server_message(exc)}")
        if isinstance(exc, OfflineModeIsEnabled):
            return FailedPrecondition(
                "huggingface_hub is in offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE) "
                "and refuses to call the remote server; unset both"
            )
        if isinstance(exc, json.JSONDecodeError):
            return Unavailable(f"{where} sent an event that is not JSON; check {URL_SETTING}")
        if isinstance(exc, InferenceTimeoutError | httpx2.TimeoutException):
            return Unavailable(
                f"{where} did not answer within {self.settings.remote_timeout_s:g} s "
                f"({TIMEOUT_SETTING}); retry"
            )
        if isinstance(exc, httpx2.ConnectError):
            return Unavailable(
                f"cannot reach {where} ({type(exc).__name__}); check {URL_SETTING} and that "
                "the server is up"
            )
        return Unavailable(f"lost the connection to {where} ({type(exc).__name__}); retry")


def tgi_sampling(sampling: Sampling) -> dict[str, Any]:
    """Sampling as TGI takes it. TGI samples only with ``do_sample`` or a warper set, and
    rejects temperature 0, top_p 1 and top_k 0: greedy sends ``do_sample=False`` alone, and
    neutral values are left out."""
    if sampling.greedy:
        return {"do_sample": False}
    params: dict[str, Any] = {"do_sample": True, "temperature": sampling.temperature}
    if sampling.top_p < 1.0:
        params["top_p"] = sampling.top_p
    if sampling.top_k > 0:
        params["top_k"] = sampling.top_k
    if sampling.seed is not None:
        params["seed"] = sampling.seed
    return params


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Where the earliest stop sequence begins in ``text[start:]``, if any does."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that a stop sequence starts with."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _json_object(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _server_message(exc: Exception) -> str:
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
