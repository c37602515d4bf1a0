"""Reward scoring benchmark (issues 5 and 22).

In one process run and on one reward model, the same (prompt, response) pairs (distinct
held-out synthetic clinical question-answer pairs) are scored three ways, in ``--rounds``
rounds, and the figures are the medians over rounds:

(c) ``ceiling``: in process, the best the model does with batching: the pairs sorted by
    length and scored in forward passes of at most N padded tokens, encoding included,
    with N each of ``CEILING_TOKENS`` in turn, the fastest of them counting;
(a) ``per_call``: in process, one :class:`clinalign.reward.scorer.Scorer` call per pair,
    one after another;
(b) ``service``: through the reward service, a real ``python -m clinalign.reward``
    process, sent by ``--clients`` concurrent gRPC clients (one channel each) as unary
    ``Score`` calls of ``--batch`` pairs; the service batches the callers' pairs together.

``ceiling_ratio`` = service / ceiling: what the service keeps of what batching can give
(target >= 0.8). ``batching_gain`` = service / per_call. On two CPU cores a ~100-token
pair is compute-bound, so batching gains little there (see bench/README.md); the same
three modes run again on short pairs (answers cut to at most ``--short-tokens`` tokens
with the prompt), where per-call overhead dominates.

The reward model is ``--model PATH``, or a sequence-classification head (seeded, untrained)
on the embedded foundation model (``make bootstrap`` builds it): scoring costs the same
whatever the head's weights. The service is idle while the in-process modes run.
``max_abs_diff`` is the largest difference between a pair's raw score in (a) and in (b):
batching must not change what a pair scores.

Last line JSON:
{"name": "reward", "ceiling_ratio", "batching_gain", "pairs_per_s": {...}, "short": {...}, ...}

    .venv/bin/python bench/reward.py [--pairs 1024] [--rounds 3] [--clients 16] [--batch 8]
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
import statistics
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
TARGETS = {"ceiling_ratio_min": 0.8}
CEILING_TOKENS = (512, 1024, 2048)  # pass sizes the ceiling tries (the service's default: 1024)


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


def short_pairs(scorer: Scorer, pairs: list[tuple[str, str]], limit: int) -> list[tuple[str, str]]:
    """The pairs with each answer cut, word by word, until prompt and answer fit ``limit``
    tokens (pairs whose prompt alone is too long are left out)."""
    out = []
    for prompt, answer in pairs:
        words = answer.split()
        while (
            words and len(scorer.encode([(prompt, " ".join(words))], truncate=False)[0].ids) > limit
        ):
            words.pop()
        if words:
            out.append((prompt, " ".join(words)))
    return out


def run_ceiling(scorer: Scorer, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Mode (c): the fastest of ``ceiling_at`` over CEILING_TOKENS."""
    runs = [ceiling_at(scorer, pairs, tokens) for tokens in CEILING_TOKENS]
    return min(runs, key=lambda r: float(r["wall_s"]))


def ceiling_at(scorer: Scorer, pairs: list[tuple[str, str]], max_tokens: int) -> dict[str, Any]:
    """Sorted by length, forward passes of at most ``max_tokens`` padded tokens, encoding
    included (as the service does)."""
    for start in range(0, min(64, len(pairs)), 16):  # warm-up
        scorer.score(pairs[start : start + 16], truncate=False)
    with CpuMeter() as cpu:
        t0 = time.perf_counter()
        encoded = scorer.encode(pairs, truncate=False)
        order = sorted(range(len(pairs)), key=lambda i: len(encoded[i].ids))
        batch: list[int] = []
        for i in order:
            width = len(encoded[i].ids)  # the longest so far: rows are sorted
            if batch and width * (len(batch) + 1) > max_tokens:
                scorer.forward([encoded[j].ids for j in batch])
                batch = []
            batch.append(i)
        if batch:
            scorer.forward([encoded[j].ids for j in batch])
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "cpu_s": cpu.seconds, "max_tokens": max_tokens}


def run_single(scorer: Scorer, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Mode (a)."""
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


def measure(
    scorer: Scorer,
    pairs: list[tuple[str, str]],
    target: str,
    common: CommonSettings,
    service_pid: int,
    args: argparse.Namespace,
    label: str,
) -> dict[str, Any]:
    """The three modes on ``pairs``, ``args.rounds`` times; medians and every round."""
    rounds = []
    for r in range(args.rounds):
        ceiling = run_ceiling(scorer, pairs)
        single = run_single(scorer, pairs)
        service = asyncio.run(
            run_service(target, common, service_pid, pairs, args.clients, args.batch)
        )
        rates = {
            "ceiling": len(pairs) / ceiling["wall_s"],
            "per_call": len(pairs) / single["wall_s"],
            "service": len(pairs) / service["wall_s"],
        }
        rounds.append(
            {
                "pairs_per_s": {k: round(v, 1) for k, v in rates.items()},
                "ceiling_ratio": rates["service"] / rates["ceiling"],
                "ceiling_tokens": ceiling["max_tokens"],
                "batching_gain": rates["service"] / rates["per_call"],
                "max_abs_diff": max(
                    abs(a - b) for a, b in zip(single["raw"], service["raw"], strict=True)
                ),
                "per_call_p50_ms": 1000 * percentile(single["latencies"], 0.50),
                "service_p50_ms": 1000 * percentile(service["latencies"], 0.50),
                "service_p99_ms": 1000 * percentile(service["latencies"], 0.99),
                "cpu_s": {
                    "ceiling": ceiling["cpu_s"],
                    "per_call": single["cpu_s"],
                    "service": service["cpu_s"],
                },
                "mean_tokens": single["tokens"] / len(pairs),
            }
        )
        log(f"{label} round {r}: " + json.dumps(rounds[-1]["pairs_per_s"]))

    def med(key: str) -> float:
        return statistics.median(float(x[key]) for x in rounds)

    return {
        "pairs": len(pairs),
        "mean_tokens": round(rounds[0]["mean_tokens"], 1),
        "pairs_per_s": {
            mode: round(statistics.median(x["pairs_per_s"][mode] for x in rounds), 1)
            for mode in ("ceiling", "per_call", "service")
        },
        "ceiling_ratio": round(med("ceiling_ratio"), 3),
        "batching_gain": round(med("batching_gain"), 3),
        "per_call_p50_ms": round(med("per_call_p50_ms"), 2),
        "service_p50_ms": round(med("service_p50_ms"), 1),
        "service_p99_ms": round(med("service_p99_ms"), 1),
        "max_abs_diff": max(x["max_abs_diff"] for x in rounds),
        "rounds": [
            {
                "pairs_per_s": x["pairs_per_s"],
                "ceiling_ratio": round(x["ceiling_ratio"], 3),
                "ceiling_tokens": x["ceiling_tokens"],
                "batching_gain": round(x["batching_gain"], 3),
                "cpu_s": x["cpu_s"],
            }
            for x in rounds
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="pairs per Score call in (b)")
    parser.add_argument("--short-tokens", type=int, default=32)
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a reward-model directory; default: a head on <data_dir>/models/foundation",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 pairs, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.rounds = 64, 1

    tmp = Path(tempfile.mkdtemp(prefix="clinalign-bench-"))
    try:
        model: Path = args.model
        if model is None:
            foundation = CommonSettings().data_dir / "models" / "foundation"
            if not (foundation / "config.json").is_file():
                sys.exit(f"no model at {foundation}: run `make bootstrap` (or pass --model PATH)")
            model = build_reward_model(foundation, tmp / "reward-model")
        scorer = Scorer(model, "bench", "cpu")
        pairs = [
            pair
            for pair in distinct_pairs(args.pairs)
            if len(scorer.encode([pair], truncate=True)[0].ids) < scorer.context
        ]  # the few longer than the model's context would be refused
        # Most held-out questions alone are longer than a short pair: draw more to find them.
        short = short_pairs(scorer, distinct_pairs(8 * args.pairs), args.short_tokens)
        short = short[: args.pairs]

        common = CommonSettings(data_dir=tmp)
        generate_tokens(common.resolved_tokens_file)
        port = free_port()
        log("starting the reward service")
        proc = start_service(model, tmp, port)
        try:
            target = f"127.0.0.1:{port}"
            asyncio.run(wait_serving(target, common, FULL_NAME, timeout_s=STARTUP_TIMEOUT_S))
            full = measure(scorer, pairs, target, common, proc.pid, args, "full")
            brief = measure(scorer, short, target, common, proc.pid, args, "short")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        del scorer
        gc.collect()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    line = {
        "name": "reward",
        "ceiling_ratio": full["ceiling_ratio"],
        "batching_gain": full["batching_gain"],
        **{k: v for k, v in full.items() if k not in ("ceiling_ratio", "batching_gain")},
        "short": brief,
        "clients": args.clients,
        "batch": args.batch,
        "service_env": {k: v for k, v in os.environ.items() if k.startswith("CLINALIGN_REWARD_")},
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "targets": TARGETS,
        "targets_met": {"ceiling_ratio": full["ceiling_ratio"] >= TARGETS["ceiling_ratio_min"]},
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
