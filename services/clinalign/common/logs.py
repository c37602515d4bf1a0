"""Structured JSON logs on stderr, with the request id and trace id of the current RPC.

Log calls pass identifiers and counts only, never prompt or output text; the formatter
adds nothing from request payloads. ``extra={"fields": {...}}`` adds structured fields.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from opentelemetry import trace

from clinalign.common.context import current_request_id

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": current_request_id(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        fields = record.__dict__.get("fields")
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception messages can carry request content.
            entry["exc_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def quiet_library_progress() -> None:
    """Turns off transformers' and huggingface_hub's tqdm bars, which would break the
    one-JSON-object-a-line log format and clutter the CLI's own progress display."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_library_progress()
    # Libraries that log request bodies at DEBUG stay at WARNING whatever our level is.
    for noisy in ("httpx", "urllib3", "transformers", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
