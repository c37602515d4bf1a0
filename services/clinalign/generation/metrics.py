"""Generation metrics.

Named after the OpenTelemetry GenAI semantic conventions where one exists
(``gen_ai.server.time_to_first_token``, ``gen_ai.server.time_per_output_token``,
``gen_ai.server.request.duration``, ``gen_ai.client.token.usage``, written the way the
OpenTelemetry Prometheus exporter writes them: dots to underscores, unit suffix); the rest
carry the service prefix ``clinalign_generation_``. Labels are the model version and the
token type, never request content.
"""

from __future__ import annotations

from opentelemetry import trace
from prometheus_client import Gauge, Histogram

from clinalign.generation.backend import Generated

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKENS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096)

TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "From admission to the first generated token.",
    ["gen_ai_response_model"],
    buckets=_LATENCY,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Inter-token latency: decode time per token after the first.",
    ["gen_ai_response_model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
)
REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "From admission to the last token.",
    ["gen_ai_response_model"],
    buckets=_LATENCY,
)
TOKEN_USAGE = Histogram(
    "gen_ai_server_token_usage_tokens",
    "Tokens per request: prompt (input) and generated (output).",
    ["gen_ai_response_model", "gen_ai_token_type"],
    buckets=_TOKENS,
)
QUEUE_TIME = Histogram(
    "clinalign_generation_queue_time_seconds",
    "From admission to the request's prefill (time spent waiting for a batch slot).",
    buckets=_LATENCY,
)
BATCH_SIZE = Histogram(
    "clinalign_generation_batch_size",
    "Sequences decoded together, observed once per decode step.",
    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256),
)
QUEUE_DEPTH = Gauge(
    "clinalign_generation_queue_depth",
    "Requests admitted and not finished (running and waiting), per served version.",
    ["gen_ai_response_model"],
)


def observe(result: Generated) -> None:
    """Records one finished request in the metrics and on the request's span (GenAI span
    attributes: counts and the finish reason, never text)."""
    version = result.model.version
    trace.get_current_span().set_attributes(
        {
            "gen_ai.operation.name": "text_completion",
            "gen_ai.response.model": version,
            "gen_ai.response.finish_reasons": [result.finish_reason],
            "gen_ai.usage.input_tokens": result.prompt_tokens,
            "gen_ai.usage.output_tokens": result.completion_tokens,
        }
    )
    TIME_TO_FIRST_TOKEN.labels(version).observe(result.ttft_s)
    REQUEST_DURATION.labels(version).observe(result.duration_s)
    if result.completion_tokens > 1:
        TIME_PER_OUTPUT_TOKEN.labels(version).observe(
            (result.duration_s - result.ttft_s) / (result.completion_tokens - 1)
        )
    TOKEN_USAGE.labels(version, "input").observe(result.prompt_tokens)
    TOKEN_USAGE.labels(version, "output").observe(result.completion_tokens)
