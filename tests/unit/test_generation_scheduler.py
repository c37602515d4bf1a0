"""The continuous-batching scheduler against plain ``model.generate``: requests that join
and leave a running batch at different steps must produce exactly what each would alone."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from clinalign.common.errors import InvalidArgument, ResourceExhausted
from clinalign.foundation import iter_qa_pairs
from clinalign.generation.backend import LENGTH, STOP, Delta, Generated, collect
from clinalign.generation.engine import LocalBackend
from clinalign.generation.params import Sampling
from clinalign.generation.scheduler import _safe_prefix

GREEDY = Sampling(temperature=0.0, max_new_tokens=20)


@pytest.fixture
async def backend(tiny_model_dir: Path) -> AsyncIterator[LocalBackend]:
    be = LocalBackend(
        tiny_model_dir, name="p", version="v1", device="cpu", max_queue=16, max_batch=4
    )
    await be.start()
    yield be
    await be.close()


def _reference(be: LocalBackend, prompt: str, max_new_tokens: int) -> str:
    assert be._scheduler is not None
    model = be._scheduler.model
    ids = torch.tensor([be.encode(prompt, max_new_tokens)])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=be._scheduler.pad_id,
        )
    return str(be.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def _questions(n: int) -> list[str]:
    return [q for q, _ in itertools.islice(iter_qa_pairs(seed=5, split="heldout"), n)]


async def test_staggered_requests_match_generate_alone(backend: LocalBackend) -> None:
    # Ten requests of different lengths through a batch of at most four: rows join the
    # running batch between steps, leave it as they finish, and the cache is re-padded.
    prompts = [q if i % 3 else q + " " + q for i, q in enumerate(_questions(10))]
    lengths = [5 + 3 * (i % 4) for i in range(10)]

    async def one(i: int) -> Generated:
        await asyncio.sleep(0.003 * i)
        return await collect(
            backend.stream(prompts[i], Sampling(temperature=0.0, max_new_tokens=lengths[i]))
        )

    results = await asyncio.gather(*(one(i) for i in range(10)))
    for i, result in enumerate(results):
        assert result.text == _reference(backend, prompts[i], lengths[i]), f"request {i}"
        assert result.completion_tokens <= lengths[i]
        assert result.prompt_tokens == len(backend.encode(prompts[i], 1))


async def test_stream_deltas_add_up_to_the_text(backend: LocalBackend) -> None:
    events = [e async for e in backend.stream(_questions(1)[0], GREEDY)]
    final = events[-1]
    assert isinstance(final, Generated)
    deltas = [e for e in events if isinstance(e, Delta)]
    assert "".join(d.text for d in deltas) == final.text
    assert [d.completion_tokens for d in deltas] == sorted(d.completion_tokens for d in deltas)
    assert 0 < final.ttft_s <= final.duration_s


async def test_stop_sequence_ends_the_text_and_never_streams(backend: LocalBackend) -> None:
    prompt = _questions(1)[0]
    full = await collect(backend.stream(prompt, Sampling(temperature=0.0, max_new_tokens=30)))
    assert len(full.text) > 8, "the fixture model should write some text"
    stop = full.text[4:7]
    cut = full.text.find(stop)
    sampling = Sampling(temperature=0.0, max_new_tokens=30, stop=(stop,))
    events = [e async for e in backend.stream(prompt, sampling)]
    final = events[-1]
    assert isinstance(final, Generated)
    assert final.finish_reason == STOP and final.text == full.text[:cut]
    assert "".join(e.text for e in events if isinstance(e, Delta)) == final.text


async def test_length_finish_and_seeded_sampling_repeats(backend: LocalBackend) -> None:
    prompt = _questions(1)[0]
    sampled = Sampling(temperature=1.0, max_new_tokens=12, seed=42)
    a = await collect(backend.stream(prompt, sampled))
    b = await collect(backend.stream(prompt, sampled))
    others = {
        (
            await collect(
                backend.stream(prompt, Sampling(temperature=1.0, max_new_tokens=12, seed=s))
            )
        ).text
        for s in range(5)
    }
    assert a.text == b.text
    assert len(others) > 1
    long = await collect(backend.stream(prompt, Sampling(temperature=0.0, max_new_tokens=3)))
    assert long.finish_reason == LENGTH and long.completion_tokens == 3


async def test_a_seeded_request_samples_the_same_alone_or_batched(backend: LocalBackend) -> None:
    """The demo seeds its labelling drafts so that a plan repeats itself: a seeded request
    draws from its own generator, whoever shares its batch."""
    prompt, *others = _questions(6)
    seeded = Sampling(temperature=1.0, max_new_tokens=16, seed=7)
    alone = await collect(backend.stream(prompt, seeded))
    unseeded = Sampling(temperature=1.0, max_new_tokens=16)
    batched = await asyncio.gather(
        *(collect(backend.stream(q, unseeded)) for q in others[:3]),
        collect(backend.stream(prompt, seeded)),
        *(collect(backend.stream(q, unseeded)) for q in others[3:]),
    )
    assert batched[3].text == alone.text


async def test_cancelled_stream_leaves_the_batch(backend: LocalBackend) -> None:
    many = Sampling(temperature=0.0, max_new_tokens=400)
    events = backend.stream(_questions(1)[0], many)
    first = await anext(events)
    assert isinstance(first, (Delta, Generated))
    await events.aclose()
    assert backend.queue_depth == 0
    assert backend._scheduler is not None
    for _ in range(100):
        if backend._scheduler.running == 0:
            break
        await asyncio.sleep(0.01)
    assert backend._scheduler.running == 0


async def test_full_queue_is_refused_at_once(tiny_model_dir: Path) -> None:
    be = LocalBackend(
        tiny_model_dir, name="p", version="v1", device="cpu", max_queue=2, max_batch=1
    )
    await be.start()
    busy = [be.stream(q, Sampling(temperature=0.0, max_new_tokens=400)) for q in _questions(2)]
    try:
        for stream in busy:
            await anext(stream)
        with pytest.raises(ResourceExhausted, match="queue is full"):
            await anext(be.stream("one more", GREEDY))
    finally:
        for stream in busy:
            with contextlib.suppress(Exception):
                await stream.aclose()
        await be.close()


async def test_prompt_longer_than_context_names_the_field(backend: LocalBackend) -> None:
    with pytest.raises(InvalidArgument, match=r"^input\.prompt: \d+ prompt tokens"):
        await anext(backend.stream("fever " * 600, GREEDY))


def test_safe_prefix_holds_back_partial_stops_and_characters() -> None:
    assert _safe_prefix("take two tablets", ()) == 16
    assert _safe_prefix("take two tab", ("tablets",)) == 9  # "tab" may become "tablets"
    assert _safe_prefix("take two\ufffd", ()) == 8  # an incomplete UTF-8 character
    assert _safe_prefix("call 91", ("911", "1.")) == 5  # the longest possible start
