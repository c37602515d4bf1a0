"""Generation serving benchmark (issue 4).

In one process run and on one model (the embedded foundation model), the same requests
(held-out synthetic clinical questions, greedy, ``--new-tokens`` each) go through:

(a) ``sequential``: in-process ``model.generate`` at batch size 1, one after another;
(b) ``static_batch``: in-process ``model.generate`` in static batches of ``--clients``
    left-padded rows (32: the practical ceiling on two CPU cores);
(c) ``service``: the generation service, a real ``python -m clinalign.generation``
    process, sent the requests by ``--clients`` concurrent gRPC clients over ``Generate``;
(c') ``service_stream``: the same over ``GenerateStream``, for time to first token;
(d) ``service_single``: the same service, one ``Generate`` call at a time.

All modes see the same token ids: each question is rendered with the model's chat
template and tokenised without special tokens, exactly as the service does. (a) and (b)
run, and the model is freed, before the service starts, so the two never share the CPU.

Generated tokens are those the model produced before its end-of-sequence token (neither
EOS nor padding counts); tok/s is that total over the mode's wall time. The JSON carries
each mode's token total, and how many answers are identical to (a)'s, so a reader can see
the modes did the same work.

Throughput (c) is measured over unary ``Generate``: the batching targets are about the
scheduler, and streaming adds a gRPC message per token per request (2,048 at the full
size), which costs the service CPU that the two cores would otherwise spend decoding.
(c') reports that cost as ``service_stream_tok_s``. Time to first token (TTFT) comes
from (c'), under the same load: each client times a request from sending it to the
stream's first message. The service sends a message only when there is new text (or the
final completion), so that is the first non-empty text in all but rare cases (an empty
answer, or a first token that is an incomplete UTF-8 character). TTFT includes queueing:
with 32 clients and 32 batch slots, the second half of the requests waits for free slots.

``single_overhead`` is the median latency of (d) over the median per-request latency of
(a): what one request pays for the service (gRPC, authentication, tokenising, the
scheduler, incremental detokenising) when there is nothing to batch with.

``cpu_s`` says where each mode's CPU time went: this process, the service, and every
other process on the machine (``other``), which should be about zero for a trustworthy
figure (see :class:`CpuMeter`).

The machine's speed drifts by tens of percent over minutes (a shared VM), so every mode is
run ``--rounds`` times (default 3); each round's ratios compare its own modes, and the
figures reported are the medians over rounds, with each round's ratios listed in
``rounds``.

Last line JSON:
{"name": "generation", "sequential_tok_s", "static_batch_tok_s", "service_tok_s",
 "batching_gain", "ceiling_ratio", "single_overhead", "p50_ttft_ms", "p99_ttft_ms", ...}

    .venv/bin/python bench/generation.py [--requests 64] [--clients 32] [--new-tokens 64]
        [--rounds 3] [--model PATH] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from clinalign.cli.stack import wait_serving
from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.foundation import iter_qa_pairs
from clinalign.generation.v1 import generation_pb2 as pb
from clinalign.generation.v1 import generation_pb2_grpc

FULL_NAME = "clinalign.generation.v1.GenerationService"
SEED = 4  # the number; any seed gives comparable questions
RPC_TIMEOUT_S = 600.0
STARTUP_TIMEOUT_S = 180.0
WARMUP_NEW_TOKENS = 4
TARGETS = {"batching_gain_min": 6.0, "ceiling_ratio_min": 0.8, "single_overhead_max": 1.10}


def log(message: str) -> None:
    print(f"[generation bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _cpu_s(service_pid: int | None) -> tuple[float, float, float] | None:
    """Busy CPU seconds so far of the whole machine, of this process and of the service
    process; None where /proc is missing."""
    try:
        machine = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        service = 0
        if service_pid is not None:
            # utime and stime, fields 14 and 15 of /proc/<pid>/stat, counted after the
            # parenthesised command name (which may contain spaces).
            stat = Path(f"/proc/{service_pid}/stat").read_text().rsplit(")", 1)[1].split()
            service = int(stat[11]) + int(stat[12])
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, machine)
    tick = os.sysconf("SC_CLK_TCK")
    t = os.times()
    return (user + nice + system + irq + softirq + steal) / tick, t.user + t.system, service / tick


class CpuMeter:
    """Where the CPU went while a block ran: this process (``bench``), the service, and
    every other process (``other``).

    These shared two-core machines also run other people's work. Any ``other`` time
    spoils a figure: torch's two threads then wait for each other at every parallel
    region, and a mode can run several times slower than it should.
    """

    def __init__(self, service_pid: int | None = None) -> None:
        self.service_pid = service_pid
        self.seconds: dict[str, float] | None = None

    def __enter__(self) -> CpuMeter:
        self._start = _cpu_s(self.service_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        end = _cpu_s(self.service_pid)
        if self._start is None or end is None:
            return
        machine, bench, service = (b - a for a, b in zip(self._start, end, strict=True))
        self.seconds = {
            "bench": round(bench, 2),
            "other": round(max(0.0, machine - bench - service), 2),
        }
        if self.service_pid is not None:
            self.seconds["service"] = round(service, 2)


@dataclass
class Mode:
    """One mode's measurement, per request in question order."""

    wall_s: float
    texts: list[str]  # decoded answers, special tokens skipped (as the service returns them)
    counts: list[int]  # generated tokens before EOS
    cpu_s: dict[str, float] | None  # CpuMeter.seconds
    latencies: list[float] = field(default_factory=list)  # per request, when one at a time
    ttfts: list[float] = field(default_factory=list)  # per request, when streamed

    @property
    def tokens(self) -> int:
        return sum(self.counts)


def questions(n: int) -> list[str]:
    """Held-out synthetic clinical questions: phrasings the model never trained on."""
    return [q for q, _ in itertools.islice(iter_qa_pairs(seed=SEED, split="heldout"), n)]


def render_ids(tokenizer: Any, qs: list[str]) -> list[list[int]]:
    """Token ids as the service computes them (LocalBackend.render + encode)."""
    out = []
    for q in qs:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        out.append(list(tokenizer(text, add_special_tokens=False).input_ids))
    return out


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids that end an answer, as the service's scheduler collects them."""
    eos = model.generation_config.eos_token_id
    ids = {int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None}
    return sorted(ids | {int(tokenizer.eos_token_id)})


def answer_ids(row: list[int], eos: list[int]) -> list[int]:
    """Generated ids up to (not including) the first EOS; what follows is padding."""
    for i, token in enumerate(row):
        if token in eos:
            return row[:i]
    return row


def generate(
    model: Any, prompts: list[list[int]], new_tokens: int, pad_id: int, eos: list[int]
) -> list[list[int]]:
    """One greedy ``model.generate`` over left-padded prompts; each row's answer ids."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
        eos_token_id=eos,
    )
    return [answer_ids(row, eos) for row in out[:, width:].tolist()]


def run_direct(
    model_path: Path, qs: list[str], batch: int, new_tokens: int
) -> tuple[dict[str, Mode], int]:
    """Modes (a) and (b), in this process, and the prompts' total token count; the model
    is freed before returning."""
    # Loaded as the service loads it on CPU: float32, eval mode.
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    eos = eos_ids(model, tokenizer)
    pad_id = int(
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    prompts = render_ids(tokenizer, qs)
    out: dict[str, Mode] = {}
    with torch.inference_mode():
        log(f"(a) sequential: {len(prompts)} requests at batch size 1")
        generate(model, prompts[:1], new_tokens, pad_id, eos)  # warm-up
        answers: list[list[int]] = []
        latencies = []
        with CpuMeter() as cpu:
            t0 = time.perf_counter()
            for p in prompts:
                t = time.perf_counter()
                answers += generate(model, [p], new_tokens, pad_id, eos)
                latencies.append(time.perf_counter() - t)
            wall = time.perf_counter() - t0
        texts = [str(tokenizer.decode(a, skip_special_tokens=True)) for a in answers]
        out["sequential"] = Mode(wall, texts, [len(a) for a in answers], cpu.seconds, latencies)
        log(f"(a) {out['sequential'].tokens} tokens in {wall:.2f}s")

        log(f"(b) static batches of {batch}")
        generate(model, prompts[:batch], WARMUP_NEW_TOKENS, pad_id, eos)  # warm-up
        batched: list[list[int]] = []
        with CpuMeter() as cpu:
            t0 = time.perf_counter()
            for start in range(0, len(prompts), batch):
                batched += generate(model, prompts[start : start + batch], new_tokens, pad_id, eos)
            wall = time.perf_counter() - t0
        texts = [str(tokenizer.decode(a, skip_special_tokens=True)) for a in batched]
        out["static_batch"] = Mode(wall, texts, [len(a) for a in batched], cpu.seconds)
        log(f"(b) {out['static_batch'].tokens} tokens in {wall:.2f}s")
    del model
    gc.collect()
    return out, sum(len(p) for p in prompts)


def request(q: str, new_tokens: int) -> tuple[pb.GenerationInput, pb.SamplingParams]:
    return (
        pb.GenerationInput(prompt=q),
        pb.SamplingParams(temperature=0.0, max_new_tokens=new_tokens),
    )


async def concurrent(
    stubs: list[generation_pb2_grpc.GenerationServiceStub],
    qs: list[str],
    new_tokens: int,
    service_pid: int,
    *,
    stream: bool,
) -> Mode:
    """Every question once, from one client per stub draining a shared queue; with
    ``stream``, each client also times its requests' first message (``Mode.ttfts``)."""
    queue = list(enumerate(qs))
    texts, counts, ttfts = [""] * len(qs), [0] * len(qs), []

    async def client(stub: generation_pb2_grpc.GenerationServiceStub) -> None:
        while queue:
            i, q = queue.pop(0)
            inp, sampling = request(q, new_tokens)
            if not stream:
                reply = await stub.Generate(
                    pb.GenerateRequest(input=inp, sampling=sampling), timeout=RPC_TIMEOUT_S
                )
                texts[i], counts[i] = reply.completion.text, reply.completion.completion_tokens
                continue
            sent, first = time.perf_counter(), 0.0
            call = stub.GenerateStream(
                pb.GenerateStreamRequest(input=inp, sampling=sampling), timeout=RPC_TIMEOUT_S
            )
            async for message in call:
                first = first or time.perf_counter()
                if message.HasField("completion"):
                    texts[i] = message.completion.text
                    counts[i] = message.completion.completion_tokens
            ttfts.append(first - sent)

    with CpuMeter(service_pid) as cpu:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(s) for s in stubs))
        wall = time.perf_counter() - t0
    return Mode(wall, texts, counts, cpu.seconds, ttfts=ttfts)


async def run_service(
    target: str,
    common: CommonSettings,
    service_pid: int,
    qs: list[str],
    clients: int,
    new_tokens: int,
) -> dict[str, Mode]:
    """Modes (c), (c') and (d), against the running service."""
    token = token_for_role(common.resolved_tokens_file, Role.EHR_CLIENT)
    # One channel (one HTTP/2 connection) per client, as separate EHR systems would have;
    # all connected before any clock starts.
    channels = [open_channel(target, common, token) for _ in range(clients)]
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        stubs = [generation_pb2_grpc.GenerationServiceStub(ch) for ch in channels]
        inp, sampling = request(qs[0], WARMUP_NEW_TOKENS)
        await stubs[0].Generate(pb.GenerateRequest(input=inp, sampling=sampling))  # warm-up
        out: dict[str, Mode] = {}

        log(f"(c) service: {len(qs)} requests from {clients} concurrent clients (Generate)")
        out["service"] = await concurrent(stubs, qs, new_tokens, service_pid, stream=False)
        log(f"(c) {out['service'].tokens} tokens in {out['service'].wall_s:.2f}s")

        log("(c') the same, streaming (GenerateStream)")
        out["service_stream"] = await concurrent(stubs, qs, new_tokens, service_pid, stream=True)
        log(f"(c') {out['service_stream'].tokens} tokens in {out['service_stream'].wall_s:.2f}s")

        log(f"(d) service: {len(qs)} requests one at a time (Generate)")
        texts, counts, latencies = [], [], []
        with CpuMeter(service_pid) as cpu:
            t0 = time.perf_counter()
            for q in qs:
                inp, sampling = request(q, new_tokens)
                t = time.perf_counter()
                reply = await stubs[0].Generate(
                    pb.GenerateRequest(input=inp, sampling=sampling), timeout=RPC_TIMEOUT_S
                )
                latencies.append(time.perf_counter() - t)
                texts.append(reply.completion.text)
                counts.append(reply.completion.completion_tokens)
            wall = time.perf_counter() - t0
        out["service_single"] = Mode(wall, texts, counts, cpu.seconds, latencies)
        log(f"(d) {out['service_single'].tokens} tokens in {wall:.2f}s")
        return out
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def start_service(model_path: Path, tmp: Path, port: int, clients: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        CLINALIGN_DATA_DIR=str(tmp),
        CLINALIGN_LOG_LEVEL="WARNING",
        CLINALIGN_GENERATION_PORT=str(port),
        CLINALIGN_GENERATION_METRICS_PORT=str(free_port()),
        CLINALIGN_GENERATION_MODEL_PATH=str(model_path),
        CLINALIGN_GENERATION_DEVICE="cpu",
        CLINALIGN_GENERATION_REPORT_TO_MONITOR="false",
        CLINALIGN_GENERATION_MAX_BATCH_SIZE=str(clients),
        CLINALIGN_GENERATION_MAX_QUEUE=str(max(64, clients)),
    )
    return subprocess.Popen([sys.executable, "-m", "clinalign.generation"], env=env)


def one_round(args: argparse.Namespace, model_path: Path, qs: list[str], r: int) -> dict[str, Any]:
    """All five modes once; the ratios of a round compare modes measured minutes apart
    at most, so drift in the machine's speed between rounds cancels out of them."""
    log(f"round {r + 1} of {args.rounds}")
    modes, prompt_tokens = run_direct(model_path, qs, args.clients, args.new_tokens)

    tmp = Path(tempfile.mkdtemp(prefix="clinalign-bench-"))
    common = CommonSettings(data_dir=tmp)
    generate_tokens(common.resolved_tokens_file)
    port = free_port()
    log("starting the generation service")
    proc = start_service(model_path, tmp, port, args.clients)
    try:
        target = f"127.0.0.1:{port}"
        asyncio.run(wait_serving(target, common, FULL_NAME, timeout_s=STARTUP_TIMEOUT_S))
        modes |= asyncio.run(
            run_service(target, common, proc.pid, qs, args.clients, args.new_tokens)
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)

    tok_s = {name: m.tokens / m.wall_s for name, m in modes.items()}
    direct_single = statistics.median(modes["sequential"].latencies)
    service_single = statistics.median(modes["service_single"].latencies)
    ttfts = modes["service_stream"].ttfts
    batching_gain = tok_s["service"] / tok_s["sequential"]
    ceiling_ratio = tok_s["service"] / tok_s["static_batch"]
    single_overhead = service_single / direct_single
    reference = modes["sequential"].texts
    line = {
        "name": "generation",
        "sequential_tok_s": round(tok_s["sequential"], 1),
        "static_batch_tok_s": round(tok_s["static_batch"], 1),
        "service_tok_s": round(tok_s["service"], 1),
        "batching_gain": round(batching_gain, 2),
        "ceiling_ratio": round(ceiling_ratio, 3),
        "single_overhead": round(single_overhead, 3),
        "p50_ttft_ms": round(1000 * percentile(ttfts, 0.50), 1),
        "p99_ttft_ms": round(1000 * percentile(ttfts, 0.99), 1),
        "service_stream_tok_s": round(tok_s["service_stream"], 1),
        "service_single_tok_s": round(tok_s["service_single"], 1),
        "direct_single_median_ms": round(1000 * direct_single, 1),
        "service_single_median_ms": round(1000 * service_single, 1),
        "tokens": {name: m.tokens for name, m in modes.items()},
        # Outputs equal to (a)'s, out of `requests`: batched float32 matmuls may round
        # differently from batch size 1 and flip a near-tie in greedy decoding.
        "identical_to_sequential": {
            name: sum(a == b for a, b in zip(reference, m.texts, strict=True))
            for name, m in modes.items()
            if name != "sequential"
        },
        "wall_s": {name: round(m.wall_s, 2) for name, m in modes.items()},
        "cpu_s": {name: m.cpu_s for name, m in modes.items()},
        "prompt_tokens": prompt_tokens,
        "requests": args.requests,
        "clients": args.clients,
        "new_tokens": args.new_tokens,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    return line


MEDIAN_KEYS = (
    "sequential_tok_s",
    "static_batch_tok_s",
    "service_tok_s",
    "batching_gain",
    "ceiling_ratio",
    "single_overhead",
    "p50_ttft_ms",
    "p99_ttft_ms",
    "service_stream_tok_s",
    "service_single_tok_s",
    "direct_single_median_ms",
    "service_single_median_ms",
)


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds (ratios are taken within a round first),
    every round's figures, and the targets judged on the medians."""
    line = dict(rounds[-1])
    for key in MEDIAN_KEYS:
        line[key] = round(statistics.median(r[key] for r in rounds), 3)
    line["rounds"] = [
        {k: r[k] for k in ("batching_gain", "ceiling_ratio", "single_overhead", "cpu_s")}
        for r in rounds
    ]
    line["targets"] = TARGETS
    line["targets_met"] = {
        "batching_gain": line["batching_gain"] >= TARGETS["batching_gain_min"],
        "ceiling_ratio": line["ceiling_ratio"] >= TARGETS["ceiling_ratio_min"],
        "single_overhead": line["single_overhead"] <= TARGETS["single_overhead_max"],
    }
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument(
        "--clients",
        type=int,
        default=32,
        help="concurrent gRPC clients in (c), the static batch size in (b) and the "
        "service's max batch size",
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--model", type=Path, default=None, help="default <data_dir>/models/foundation"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="repeat every mode; figures are medians"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 8 requests, 4 clients, 16 tokens, one round",
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.clients, args.new_tokens, args.rounds = 8, 4, 16, 1
    model_path: Path = args.model or CommonSettings().data_dir / "models" / "foundation"
    if not (model_path / "config.json").is_file():
        sys.exit(f"no model at {model_path}: run `make bootstrap` first (or pass --model PATH)")

    qs = questions(args.requests)
    rounds = [one_round(args, model_path, qs, r) for r in range(args.rounds)]
    line = summarise(rounds)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
