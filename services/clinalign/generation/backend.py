"""What every generation backend provides, local (transformers in this process) or
remote (a TGI or OpenAI-compatible server).

A backend serves one model version. Its only generation method is :meth:`Backend.stream`:
it yields :class:`Delta` events as text is decoded and ends with exactly one
:class:`Generated`. Unary calls collect the stream (:func:`collect`), so both RPCs share
one code path. Closing the iterator (the caller went away, or its deadline passed) stops
the work for that request.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from clinalign.generation.params import Sampling

EOS, LENGTH, STOP = "eos", "length", "stop"


@dataclass(frozen=True)
class ModelInfo:
    """The served version, as provenance reports it."""

    name: str
    version: str
    uri: str  # model directory, or the remote server's URL
    weights_hash: str
    base_model: str = ""
    adapter_path: str = ""


@dataclass(frozen=True)
class Delta:
    """Text decoded since the previous event (may be empty) and the tokens so far."""

    text: str
    completion_tokens: int


@dataclass(frozen=True)
class Generated:
    """The finished draft with its accounting."""

    text: str
    finish_reason: str  # EOS | LENGTH | STOP
    prompt_tokens: int
    completion_tokens: int
    model: ModelInfo
    queue_s: float  # admission to first scheduling
    ttft_s: float  # admission to first generated token
    duration_s: float  # admission to finish


Event = Delta | Generated


class Backend(Protocol):
    info: ModelInfo

    async def start(self) -> ModelInfo:
        """Loads the model or checks the remote server; raises FailedPrecondition or
        Unavailable with the fix when it cannot."""
        ...

    def stream(
        self, prompt: str, sampling: Sampling, *, deltas: bool = True
    ) -> AsyncGenerator[Event, None]:
        """Generates from a user message (the backend applies the model's chat template).
        With deltas=False only the final :class:`Generated` is yielded (unary calls).

        Raises InvalidArgument (field ``input.prompt``) when the prompt does not fit the
        context, ResourceExhausted when the queue is full or the server is overloaded,
        Unavailable when a remote server cannot be reached.
        """
        ...

    @property
    def queue_depth(self) -> int:
        """Requests admitted and not yet finished."""
        ...

    async def close(self) -> None:
        """Stops taking requests, lets in-flight ones finish, then frees the model."""
        ...


async def collect(events: AsyncGenerator[Event, None]) -> Generated:
    """The final :class:`Generated` of a stream; the stream is closed whatever happens,
    so a cancelled caller frees its batch slot at once."""
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, Generated):
                return event
    raise RuntimeError("backend stream ended without a result")
