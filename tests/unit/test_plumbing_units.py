"""Small pure pieces of the plumbing: JSON logs, page tokens, weights hash, sampling
validation, and the monitor reporter's buffering, retry and drop accounting."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path

import pytest

from clinalign.common.context import request_id_var
from clinalign.common.errors import InvalidArgument
from clinalign.common.hashing import weights_hash
from clinalign.common.logs import JsonFormatter
from clinalign.common.pagination import next_token, page_bounds
from clinalign.generation.params import validate_sampling
from clinalign.generation.reporter import DROPPED, SENT, MonitorReporter
from clinalign.generation.spool import OutputSpool
from clinalign.monitor.v1 import monitor_pb2


def test_json_log_carries_request_id_and_fields_but_only_exception_type() -> None:
    token = request_id_var.set("req-1")
    try:
        try:
            raise ValueError("patient Jane Roe")
        except ValueError:
            record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
            import sys

            record.exc_info = sys.exc_info()
        record.fields = {"batch": 3}
        entry = json.loads(JsonFormatter("monitor").format(record))
    finally:
        request_id_var.reset(token)
    assert entry["request_id"] == "req-1" and entry["service"] == "monitor"
    assert entry["batch"] == 3 and entry["exc_type"] == "ValueError"
    assert "Jane" not in json.dumps(entry)


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    limit, offset = page_bounds(10, "")
    assert (limit, offset) == (10, 0)
    token = next_token(offset, limit, returned=10)
    assert page_bounds(10, token) == (10, 10)
    assert next_token(10, 10, returned=3) == ""
    with pytest.raises(InvalidArgument, match=r"^page_token:"):
        page_bounds(10, "!!not-a-token")
    with pytest.raises(InvalidArgument, match=r"^page_size:"):
        page_bounds(1000, "")
    huge = base64.urlsafe_b64encode(b"o:" + b"9" * 40).decode()  # past any database's OFFSET
    with pytest.raises(InvalidArgument, match=r"^page_token: is not a token this service"):
        page_bounds(10, huge)


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(10**12, 0), (-(10**12), 0), (253402300800, 0), (0, 2 * 10**9)]
)
def test_a_time_outside_a_timestamps_range_is_the_callers_mistake(seconds: int, nanos: int) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    from clinalign.common.protos import datetime_from

    with pytest.raises(InvalidArgument, match=r"^outputs\[2\]\.create_time: is not a valid time"):
        datetime_from(Timestamp(seconds=seconds, nanos=nanos), "outputs[2].create_time")


def test_weights_hash_changes_with_content_and_needs_weights(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    first = weights_hash(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    assert weights_hash(tmp_path) != first
    with pytest.raises(FileNotFoundError, match="no weight files"):
        weights_hash(tmp_path / "missing")


def test_sampling_defaults_and_greedy() -> None:
    s = validate_sampling(
        temperature=0.0,
        top_p=None,
        top_k=None,
        max_new_tokens=None,
        stop=["\n\n"],
        seed=7,
        default_max_new_tokens=64,
        max_new_tokens_limit=128,
    )
    assert s.greedy and s.max_new_tokens == 64 and s.top_p == 1.0 and s.stop == ("\n\n",)


def _out(i: int) -> monitor_pb2.ProductionOutput:
    return monitor_pb2.ProductionOutput(output_id=f"o{i}", model_version="v")


async def test_reporter_batches_retries_until_delivered_and_counts_drops() -> None:
    calls: list[int] = []
    failures = {"left": 3}
    delivered: list[str] = []

    async def send(batch: list[monitor_pb2.ProductionOutput]) -> None:
        calls.append(len(batch))
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("monitor down")
        delivered.extend(o.output_id for o in batch)

    sent_before = SENT._value.get()
    full_before = DROPPED.labels("spool_full")._value.get()
    reporter = MonitorReporter(send, OutputSpool(None, capacity=3), batch=2, backoff_s=0.001)
    assert [await reporter.submit(_out(i)) for i in range(4)] == [True, True, True, False]
    reporter.start()
    await asyncio.wait_for(reporter.drained(), 5)
    await reporter.stop()
    assert calls == [2, 2, 2, 2, 1]  # the first batch failed three times, retried whole
    assert delivered == ["o0", "o1", "o2"]  # in order, each once
    assert SENT._value.get() == sent_before + 3
    assert DROPPED.labels("spool_full")._value.get() == full_before + 1


def test_the_spool_is_bounded_ordered_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "spool" / "generation.db"
    spool = OutputSpool(path, capacity=3)
    assert [spool.put(f"p{i}".encode(), "") for i in range(4)] == [True, True, True, False]
    first = spool.peek(2)
    spool.ack([first[0][0]])
    spool.close()
    again = OutputSpool(path, capacity=3)  # a restarted service
    assert [p for _, p, _ in again.peek(10)] == [b"p1", b"p2"]
    assert len(again) == 2 and again.put(b"p3", "")
    again.close()
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        OutputSpool(None, capacity=0)


def test_status_lists_each_replica_behind_a_headless_service() -> None:
    """``clinalign status`` asks every address a dns:/// target resolves to (the pods of a
    headless Service), naming the Service for TLS; a plain address is itself."""
    from clinalign.cli.stack import Endpoint, replicas

    plain = Endpoint("generation", "g", 50051, 9101, "127.0.0.1")
    assert replicas(plain) == [plain]
    expanded = replicas(Endpoint("generation", "g", 50051, 9101, "dns:///localhost"))
    assert expanded and all(e.server_name == "localhost" for e in expanded)
    assert {e.host for e in expanded} <= {"127.0.0.1", "[::1]"}
    assert "127.0.0.1:50051" in {e.target for e in expanded}
    unknown = Endpoint("reward", "r", 50052, 9102, "dns:///no-such-host.invalid")
    assert replicas(unknown) == [unknown]
