"""The gateway's Prometheus metrics: requests by route template (never a path with ids,
never request content), cards returned, feedback outcomes by service and model version,
and cards whose model card lacked the registry's facts."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from clinalign.common.web import RouteMetrics

REQUESTS = Counter(
    "clinalign_cds_hooks_requests",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
SERVER_TIME = Histogram(
    "clinalign_cds_hooks_request_duration_seconds",
    "Server time of HTTP requests by route template and method.",
    ["route", "method"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CARDS = Counter(
    "clinalign_cds_hooks_cards",
    "Cards returned by CDS service and model version.",
    ["service", "model_version"],
)
OUTCOMES = Counter(
    "clinalign_cds_hooks_feedback",
    "Feedback outcomes (accepted, overridden) by CDS service and model version; repeats of "
    "the same feedback are not counted again.",
    ["service", "model_version", "outcome"],
)

DEGRADED_CARDS = Counter(
    "clinalign_cds_hooks_cards_without_registry_facts",
    "Cards whose model Device holds only the draft's provenance: the registry could not "
    "be read (unavailable), has no such version (not_found) or holds other weights under "
    "that version (weights_mismatch).",
    ["reason"],
)

observe = RouteMetrics(REQUESTS, SERVER_TIME).observe
