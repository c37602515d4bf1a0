"""Reward scoring benchmark (issue 5).

In one process run and on one reward model, the same (prompt, response) pairs (distinct
held-out synthetic clinical question-answer pairs) are scored:

(a) ``single``: in process, one :class:`clinalign.reward.scorer.Scorer` call per pair,
    one after another;
(b) ``service``: through the reward service, a real ``python -m clinalign.reward``
    process, sent by ``--clients`` concurrent gRPC clients (one channel each) as unary
    ``Score`` calls of ``--batch`` pairs; the service batches the callers' pairs together.

The reward model is ``--model PATH``, or a sequence-classification head (seeded, untrained)
on the embedded foundation model (``make bootstrap`` builds it): scoring costs the same
whatever the head's weights. (a) runs, and its model is freed, before the service starts,
so the two never share the CPU. ``max_abs_diff`` is the largest difference between a
pair's raw score in (a) and in (b): batching must not change what a pair scores.

Latency is per call: one pair in (a), one batch of ``--batch`` in (b), queueing included.
``cpu_s`` says where each mode's CPU time went: this process, the service, and every
other process on the machine (``other``), which should be about zero for a trustworthy
figure (see ``bench/generation.py``'s ``CpuMeter``).

Last line JSON:
{"name": "reward", "single_pairs_per_s", "service_pairs_per_s", "ratio", ...}

    .venv/bin/python bench/reward.py [--pairs 2048] [--clients 16] [--batch 8]
        [--model PATH] [--quick]

The service runs with its default settings; set ``CLINALIGN_REWARD_*`` variables (say
``CLINALIGN_REWARD_BATCH_WAIT_MS=2``) to measure others.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from clinalign.cli.stack import wait_serving
from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.foundation import iter_qa_pairs
from clinalign.reward.scorer import Scorer
from clinalign.reward.v1 import reward_pb2 as pb
from clinalign.reward.v1 import reward_pb2_grpc

# The sibling benchmark: a script's directory is first on sys.path.
from generation import CpuMeter, free_port, percentile

FULL_NAME = "clinalign.reward.v1.RewardService"
SEED = 5  # the number; any seed gives comparable pairs
HEAD_SEED = 0
RPC_TIMEOUT_S = 600.0
STARTUP_TIMEOUT_S = 180.0
TARGETS = {"ratio_min": 5.0}


def log(message: str) -> None:
    print(f"[reward bench] {message}", file=sys.stderr, flush=True)


def distinct_pairs(n: int) -> list[tuple[str, str]]:
    """n distinct held-out (question, answer) pairs with a non-empty answer (the service
    rejects an empty response), in generation order."""
    seen: dict[tuple[str, str], None] = {}
    for pair in iter_qa_pairs(seed=SEED, split="heldout"):
        if pair[1].strip():
            seen.setdefault(pair, None)
        if len(seen) == n:
            break
    return list(seen)


def build_reward_model(foundation: Path, out: Path) -> Path:
    """A sequence-classification head on the foundation model (what reward training
    starts from), saved with the foundation tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(HEAD_SEED)
    model = AutoModelForSequenceClassification.from_pretrained(foundation, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(foundation)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_single(model: Path, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Mode (a); the model is freed before returning."""
    scorer = Scorer(model, "bench", "cpu")
    for pair in pairs[:8]:  # warm-up
        scorer.score([pair], truncate=False)
    raw, latencies = [], []
    with CpuMeter() as cpu:
        t0 = time.perf_counter()
        for pair in pairs:
            t = time.perf_counter()
            raw.append(scorer.score([pair], truncate=False)[0].raw_score)
            latencies.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
    tokens = sum(len(e.ids) for e in scorer.encode(pairs, truncate=False))
    del scorer
    gc.collect()
    return {
        "wall_s": wall,
        "raw": raw,
        "latencies": latencies,
        "cpu_s": cpu.seconds,
        "tokens": tokens,
    }


async def run_service(
    target: str,
    common: CommonSettings,
    service_pid: int,
    pairs: list[tuple[str, str]],
    clients: int,
    batch: int,
) -> dict[str, Any]:
    """Mode (b): every batch once, from one client per channel draining a shared queue."""
    token = token_for_role(common.resolved_tokens_file, Role.SERVICE)
    channels = [open_channel(target, common, token) for _ in range(clients)]
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        stubs = [reward_pb2_grpc.RewardServiceStub(ch) for ch in channels]
        batches = [pairs[i : i + batch] for i in range(0, len(pairs), batch)]
        await asyncio.gather(  # warm-up: every channel once
            *(stub.Score(request(batches[0]), timeout=RPC_TIMEOUT_S) for stub in stubs)
        )
        queue = list(enumerate(batches))
        raw: list[list[float]] = [[] for _ in batches]
        latencies: list[float] = []

        async def client(stub: reward_pb2_grpc.RewardServiceStub) -> None:
            while queue:
                i, items = queue.pop(0)
                t = time.perf_counter()
                reply = await stub.Score(request(items), timeout=RPC_TIMEOUT_S)
                latencies.append(time.perf_counter() - t)
                raw[i] = [r.raw_score for r in reply.results]

        with CpuMeter(service_pid) as cpu:
            t0 = time.perf_counter()
            await asyncio.gather(*(client(stub) for stub in stubs))
            wall = time.perf_counter() - t0
        return {
            "wall_s": wall,
            "raw": [x for row in raw for x in row],
            "latencies": latencies,
            "cpu_s": cpu.seconds,
        }
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def request(items: list[tuple[str, str]]) -> pb.ScoreRequest:
    return pb.ScoreRequest(items=[pb.ScoreItem(prompt=p, response=r) for p, r in items])


def start_service(model: Path, tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """The service with its default settings, apart from any CLINALIGN_REWARD_* variables
    set in the environment (how to try other batching settings)."""
    env = dict(
        os.environ,
        CLINALIGN_DATA_DIR=str(tmp),
        CLINALIGN_LOG_LEVEL="WARNING",
        CLINALIGN_REWARD_PORT=str(port),
        CLINALIGN_REWARD_METRICS_PORT=str(free_port()),
        CLINALIGN_REWARD_MODEL_PATH=str(model),
        CLINALIGN_REWARD_MODEL_VERSION="bench",
        CLINALIGN_REWARD_DEVICE="cpu",
    )
    return subprocess.Popen([sys.executable, "-m", "clinalign.reward"], env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="pairs per Score call in (b)")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a reward-model directory; default: a head on <data_dir>/models/foundation",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 pairs")
    args = parser.parse_args()
    if args.quick:
        args.pairs = 128

    tmp = Path(tempfile.mkdtemp(prefix="clinalign-bench-"))
    try:
        model: Path = args.model
        if model is None:
            foundation = CommonSettings().data_dir / "models" / "foundation"
            if not (foundation / "config.json").is_file():
                sys.exit(f"no model at {foundation}: run `make bootstrap` (or pass --model PATH)")
            model = build_reward_model(foundation, tmp / "reward-model")
        pairs = distinct_pairs(args.pairs)

        log(f"(a) single: {len(pairs)} pairs, one Scorer call each")
        single = run_single(model, pairs)
        log(f"(a) {single['wall_s']:.2f}s")

        common = CommonSettings(data_dir=tmp)
        generate_tokens(common.resolved_tokens_file)
        port = free_port()
        log("starting the reward service")
        proc = start_service(model, tmp, port)
        try:
            target = f"127.0.0.1:{port}"
            asyncio.run(wait_serving(target, common, FULL_NAME, timeout_s=STARTUP_TIMEOUT_S))
            log(f"(b) service: {args.clients} clients, Score calls of {args.batch} pairs")
            service = asyncio.run(
                run_service(target, common, proc.pid, pairs, args.clients, args.batch)
            )
            log(f"(b) {service['wall_s']:.2f}s")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    single_rate = len(pairs) / single["wall_s"]
    service_rate = len(pairs) / service["wall_s"]
    ratio = service_rate / single_rate
    line = {
        "name": "reward",
        "single_pairs_per_s": round(single_rate, 1),
        "service_pairs_per_s": round(service_rate, 1),
        "ratio": round(ratio, 2),
        "single_p50_ms": round(1000 * percentile(single["latencies"], 0.50), 2),
        "single_p99_ms": round(1000 * percentile(single["latencies"], 0.99), 2),
        "service_p50_ms": round(1000 * percentile(service["latencies"], 0.50), 1),
        "service_p99_ms": round(1000 * percentile(service["latencies"], 0.99), 1),
        "max_abs_diff": max(abs(a - b) for a, b in zip(single["raw"], service["raw"], strict=True)),
        "wall_s": {"single": round(single["wall_s"], 2), "service": round(service["wall_s"], 2)},
        "cpu_s": {"single": single["cpu_s"], "service": service["cpu_s"]},
        "pairs": len(pairs),
        "mean_tokens": round(single["tokens"] / len(pairs), 1),
        "clients": args.clients,
        "batch": args.batch,
        "service_env": {k: v for k, v in os.environ.items() if k.startswith("CLINALIGN_REWARD_")},
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "targets": TARGETS,
        "targets_met": {"ratio": ratio >= TARGETS["ratio_min"]},
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
