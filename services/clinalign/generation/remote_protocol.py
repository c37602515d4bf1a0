"""The remote backend's protocol adapters: a TGI or OpenAI-compatible stream read into
:class:`Piece` events, the same for both APIs, and those pieces turned into the backend's
:class:`~clinalign.generation.backend.Delta` and
:class:`~clinalign.generation.backend.Generated` events.

Stop sequences are cut locally too, and text that could be the start of one is held back,
so the deltas never show a stop sequence and always add up to the final text.

Finish reasons. TGI: ``length`` -> LENGTH, ``eos_token`` -> EOS, ``stop_sequence`` -> STOP.
OpenAI: ``length`` -> LENGTH; ``stop`` -> STOP when the server names the matched string
(vLLM's ``stop_reason``) or the text contained one, else EOS (OpenAI's ``stop`` covers
both); anything else (vLLM's ``abort``) is a failed generation: UNAVAILABLE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import AsyncInferenceClient, ChatCompletionInputStreamOptions

from clinalign.common.errors import Unavailable
from clinalign.generation.backend import EOS, LENGTH, STOP, Delta, Event, Generated, ModelInfo
from clinalign.generation.params import Sampling

TGI_FINISH = {"length": LENGTH, "eos_token": EOS, "stop_sequence": STOP}

log = logging.getLogger("clinalign.generation.remote")


@dataclass
class Piece:
    """One server event, the same for both APIs."""

    text: str = ""  # visible text; special tokens give ""
    tokens: int = 0  # generated tokens it accounts for
    finish: str | None = None  # EOS | LENGTH | STOP, on the event that ends the generation
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Clock:
    """Local timings of one request, from admission."""

    admitted: float = field(default_factory=time.perf_counter)
    headers: float | None = None
    first_token: float | None = None


# -- TGI -------------------------------------------------------------------------------


async def tgi_pieces(
    client: AsyncInferenceClient,
    prompt: str,
    sampling: Sampling,
    clock: Clock,
    *,
    url: str,
    render: Callable[[str], str] | None,
) -> AsyncGenerator[Piece, None]:
    """TGI's compat route, with the prompt rendered by ``render`` (the model's chat
    template; None sends the user message as it is)."""
    inputs = render(prompt) if render is not None else prompt
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
        piece = Piece(text="" if token.special else token.text, tokens=1)
        if out.details is not None:
            piece.finish = TGI_FINISH.get(out.details.finish_reason)
            if piece.finish is None:
                raise Unavailable(
                    f"the remote TGI server at {url} ended the generation with the "
                    f"unknown finish_reason {out.details.finish_reason!r}"
                )
            piece.prompt_tokens = out.details.input_length  # None before TGI 2.x
            piece.completion_tokens = out.details.generated_tokens
        yield piece


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


# -- OpenAI-compatible -----------------------------------------------------------------


async def openai_pieces(
    client: AsyncInferenceClient,
    prompt: str,
    sampling: Sampling,
    clock: Clock,
    *,
    url: str,
    model: str,
) -> AsyncGenerator[Piece, None]:
    """``/v1/chat/completions`` with the user message; the server applies the chat
    template."""
    top_k = sampling.top_k if not sampling.greedy else 0
    stream = await client.chat_completion(
        messages=[{"role": "user", "content": prompt}],
        model=model or None,
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
        piece = Piece()
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
                piece.finish = openai_finish(choice.finish_reason, choice.get("stop_reason"), url)
        yield piece


def openai_finish(reason: str, stop_reason: object, url: str) -> str:
    if reason in TGI_FINISH:  # TGI's Messages API may use its own words
        return TGI_FINISH[reason]
    if reason == "stop":
        # vLLM names the matched stop string (an int is a stop token id: an EOS).
        return STOP if isinstance(stop_reason, str) else EOS
    log.warning(
        "unknown finish_reason from the remote server", extra={"fields": {"remote_url": url}}
    )
    raise Unavailable(
        f"the inference backend ended the generation with finish_reason {reason!r}; retry"
    )


# -- pieces to events ------------------------------------------------------------------


@dataclass
class _Tally:
    """What the pieces so far add up to."""

    tokens: int = 0
    finish: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def add(self, piece: Piece, clock: Clock) -> None:
        if piece.tokens and clock.first_token is None:
            clock.first_token = time.perf_counter()
        self.tokens += piece.tokens
        self.finish = piece.finish or self.finish
        if piece.prompt_tokens is not None:
            self.prompt_tokens = piece.prompt_tokens
        if piece.completion_tokens is not None:
            self.completion_tokens = piece.completion_tokens


async def events(
    pieces: AsyncIterator[Piece], sampling: Sampling, clock: Clock, *, info: ModelInfo, url: str
) -> AsyncGenerator[Event, None]:
    """Deltas as text arrives (held back while it could be a stop sequence's start),
    then the result."""
    stops = sampling.stop
    longest = max((len(s) for s in stops), default=0)
    text, emitted = "", 0
    tally = _Tally()
    async for piece in pieces:
        tally.add(piece, clock)
        if not piece.text:
            continue
        search_from = max(0, len(text) - longest + 1)
        text += piece.text
        cut = find_stop(text, stops, search_from)
        if cut is not None:
            # TGI returns the stop sequence as part of the text; a server that ignores
            # `stop` is stopped here (leaving the loop closes its stream).
            text, tally.finish = text[:cut], STOP
            break
        safe = len(text) - held_back(text, stops)
        if safe > emitted:
            yield Delta(text[emitted:safe], tally.tokens)
            emitted = safe
    if tally.finish is None:
        log.warning("the remote stream ended early", extra={"fields": {"remote_url": url}})
        raise Unavailable(
            "the inference backend ended the stream before the generation finished; retry"
        )
    if len(text) > emitted:
        yield Delta(text[emitted:], tally.tokens)
    end = time.perf_counter()
    yield Generated(
        text=text,
        finish_reason=tally.finish,
        prompt_tokens=tally.prompt_tokens or 0,
        completion_tokens=(
            tally.tokens if tally.completion_tokens is None else tally.completion_tokens
        ),
        model=info,
        queue_s=(clock.headers or end) - clock.admitted,
        ttft_s=(clock.first_token or end) - clock.admitted,
        duration_s=end - clock.admitted,
    )


def find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Where the earliest stop sequence begins in ``text[start:]``, if any does."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that a stop sequence starts with."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
