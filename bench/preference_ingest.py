"""Preference-store ingest benchmark (issue 3).

Through gRPC against a real service process: stores 20,000 prompts and 40,000 responses
of clinical length (de-identification included), then 100,000 comparisons in batches
from several concurrent clients; separately inserts the same comparison rows straight
through SQLAlchemy Core into a fresh database of the same kind (the baseline); then
creates a snapshot and exports it. Last line JSON:
{"name": "preference_ingest", "texts_per_s", "grpc_rows_per_s", "direct_rows_per_s",
 "ratio", "snapshot_create_s", "snapshot_export_s", "p99_submit_ms", ...}

    .venv/bin/python bench/preference_ingest.py [--backend sqlite|postgres] [--scale 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, select, text

from clinalign.cli.stack import wait_serving
from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.common.db import Database, sqlalchemy_url
from clinalign.foundation import iter_qa_pairs
from clinalign.preference import models
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MIGRATIONS = Path(models.__file__).parent / "migrations"
CLIENTS = 4
FULL_NAME = "clinalign.preference.v1.PreferenceService"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_database(backend: str, tmp: Path, name: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / f'{name}.db'}"
    db = f"clinalign_bench_{name}_{os.getpid()}"
    engine = create_engine(sqlalchemy_url(PG_ADMIN), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db}"'))
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    engine.dispose()
    return f"postgresql://postgres@127.0.0.1:5432/{db}"


def drop_database(url: str) -> None:
    if not url.startswith("postgresql"):
        return
    engine = create_engine(sqlalchemy_url(PG_ADMIN), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    engine.dispose()


def texts(n_prompts: int) -> tuple[list[str], list[str]]:
    """Synthetic clinical questions and answers from the project's own corpus generator."""
    qa = list(itertools.islice(iter_qa_pairs(seed=7), n_prompts * 2))
    prompts = [f"{q} (case {i})" for i, (q, _) in enumerate(qa[:n_prompts])]
    answers = [a for _, a in qa]
    return prompts, answers


async def run_grpc(
    target: str, common: CommonSettings, n_prompts: int, n_comparisons: int, batch: int
) -> dict[str, Any]:
    token = token_for_role(common.resolved_tokens_file, Role.ADMIN)
    prompts, answers = texts(n_prompts)
    out: dict[str, Any] = {}
    async with open_channel(target, common, token) as ch:
        stub = preference_pb2_grpc.PreferenceServiceStub(ch)
        await stub.RegisterAnnotator(
            pb.RegisterAnnotatorRequest(annotator=pb.Annotator(id="bench-ann", role="physician"))
        )

        async def pool(jobs: list[Any]) -> list[float]:
            """Runs coroutine factories on CLIENTS concurrent workers; returns latencies."""
            queue = list(enumerate(jobs))
            latencies: list[float] = []

            async def worker() -> None:
                while queue:
                    _, job = queue.pop(0)
                    t0 = time.perf_counter()
                    await job()
                    latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(worker() for _ in range(CLIENTS)))
            return latencies

        pids: list[str] = [""] * n_prompts

        def prompt_job(start: int) -> Any:
            async def job() -> None:
                resp = await stub.SubmitPrompts(
                    pb.SubmitPromptsRequest(
                        idempotency_key=f"prompts-{start:08d}",
                        prompts=[
                            pb.PromptInput(
                                text=t, source=pb.PROMPT_SOURCE_CURATED, tags=["specialty:general"]
                            )
                            for t in prompts[start : start + batch]
                        ],
                    ),
                    timeout=600,
                )
                pids[start : start + len(resp.ids)] = resp.ids

            return job

        rids: list[str] = [""] * (2 * n_prompts)

        def response_job(start: int) -> Any:
            async def job() -> None:
                resp = await stub.SubmitResponses(
                    pb.SubmitResponsesRequest(
                        idempotency_key=f"responses-{start:08d}",
                        responses=[
                            pb.ResponseInput(
                                prompt_id=pids[i // 2], text=answers[i], model_version="policy-v1"
                            )
                            for i in range(start, min(start + batch, 2 * n_prompts))
                        ],
                    ),
                    timeout=600,
                )
                rids[start : start + len(resp.ids)] = resp.ids

            return job

        t0 = time.perf_counter()
        await pool([prompt_job(s) for s in range(0, n_prompts, batch)])
        await pool([response_job(s) for s in range(0, 2 * n_prompts, batch)])
        text_s = time.perf_counter() - t0
        out["texts"] = 3 * n_prompts
        out["text_mb"] = round(sum(len(t) for t in prompts + answers) / 1e6, 1)
        out["texts_per_s"] = round(3 * n_prompts / text_s, 1)

        # Requests are built before the clock starts: the benchmark measures the service,
        # not the client's protobuf construction (both share the same two cores).
        requests = [
            pb.SubmitComparisonsRequest(
                idempotency_key=f"cmp-{start:08d}",
                comparisons=[
                    pb.Comparison(
                        context=pb.LabelContext(annotator_id="bench-ann", guideline_version="g1"),
                        response_a_id=rids[2 * (i % n_prompts)],
                        response_b_id=rids[2 * (i % n_prompts) + 1],
                        preference=pb.PREFERENCE_A if i % 3 else pb.PREFERENCE_B,
                    )
                    for i in range(start, min(start + batch, n_comparisons))
                ],
            )
            for start in range(0, n_comparisons, batch)
        ]

        def comparison_job(request: pb.SubmitComparisonsRequest) -> Any:
            async def job() -> None:
                await stub.SubmitComparisons(request, timeout=600)

            return job

        t0 = time.perf_counter()
        latencies = await pool([comparison_job(r) for r in requests])
        grpc_s = time.perf_counter() - t0
        out["grpc_rows_per_s"] = round(n_comparisons / grpc_s, 1)
        latencies.sort()
        out["p99_submit_ms"] = round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1)

        t0 = time.perf_counter()
        snap = (await stub.CreateSnapshot(pb.CreateSnapshotRequest(), timeout=600)).snapshot
        out["snapshot_create_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        size = 0
        async for part in stub.ExportSnapshot(
            pb.ExportSnapshotRequest(
                id=snap.id, format=pb.EXPORT_FORMAT_JSONL, kind=pb.EXPORT_KIND_PREFERENCE
            ),
            timeout=600,
        ):
            size += len(part.chunk)
        out["snapshot_export_s"] = round(time.perf_counter() - t0, 2)
        out["snapshot_pairs"] = snap.train_pairs + snap.eval_pairs
        out["export_mb"] = round(size / 1e6, 1)
    return out


def run_direct(source_url: str, target_url: str, batch: int) -> float:
    """Baseline: the same comparison rows, inserted with SQLAlchemy Core in batches of the
    same size, one transaction per batch, into a fresh database (referenced rows copied
    beforehand, untimed)."""
    source, target = (
        Database(source_url, models.Base),
        Database(target_url, models.Base, migrations=MIGRATIONS),
    )
    target.create_schema()
    with source.engine.connect() as src, target.engine.begin() as dst:
        for table in (models.AnnotatorRow, models.PromptRow, models.ResponseRow):
            rows = [dict(r._mapping) for r in src.execute(select(table.__table__))]
            for i in range(0, len(rows), 5000):
                dst.execute(insert(table), rows[i : i + 5000])
        comparisons = [
            dict(r._mapping) for r in src.execute(select(models.ComparisonRow.__table__))
        ]
    t0 = time.perf_counter()
    for i in range(0, len(comparisons), batch):
        with target.engine.begin() as conn:
            conn.execute(insert(models.ComparisonRow), comparisons[i : i + batch])
    elapsed = time.perf_counter() - t0
    source.dispose()
    target.dispose()
    return len(comparisons) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full sizes")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    n_prompts, n_comparisons = int(20_000 * args.scale), int(100_000 * args.scale)
    tmp = Path(tempfile.mkdtemp(prefix="clinalign-bench-"))
    common = CommonSettings(data_dir=tmp)
    generate_tokens(common.resolved_tokens_file)
    service_url = fresh_database(args.backend, tmp, "service")
    direct_url = fresh_database(args.backend, tmp, "direct")
    port = free_port()
    env = dict(
        os.environ,
        CLINALIGN_DATA_DIR=str(tmp),
        CLINALIGN_PREFERENCE_PORT=str(port),
        CLINALIGN_PREFERENCE_METRICS_PORT=str(free_port()),
        CLINALIGN_PREFERENCE_DATABASE_URL=service_url,
        CLINALIGN_PREFERENCE_MAX_BATCH=str(args.batch),
        CLINALIGN_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen([sys.executable, "-m", "clinalign.preference"], env=env)
    try:
        target = f"127.0.0.1:{port}"
        asyncio.run(wait_serving(target, common, FULL_NAME))
        result = asyncio.run(run_grpc(target, common, n_prompts, n_comparisons, args.batch))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    direct = run_direct(service_url, direct_url, args.batch)
    for url in (service_url, direct_url):
        drop_database(url)
    line = {
        "name": "preference_ingest",
        "backend": args.backend,
        "texts_per_s": result["texts_per_s"],
        "grpc_rows_per_s": result["grpc_rows_per_s"],
        "direct_rows_per_s": round(direct, 1),
        "ratio": round(result["grpc_rows_per_s"] / direct, 3),
        "snapshot_create_s": result["snapshot_create_s"],
        "snapshot_export_s": result["snapshot_export_s"],
        "p99_submit_ms": result["p99_submit_ms"],
        "snapshot_pairs": result["snapshot_pairs"],
        "export_mb": result["export_mb"],
        "text_mb": result["text_mb"],
        "comparisons": n_comparisons,
        "batch": args.batch,
        "clients": CLIENTS,
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
