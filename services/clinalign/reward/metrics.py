"""Reward metrics, with the service prefix ``clinalign_reward_``.

The score histogram and the running mean and standard deviation are per model version (a
cost model's costs go to their own histogram, ``clinalign_reward_cost``):
monitoring compares a version's score distribution over time (drift) and across versions.
Labels are the model version only, never request content.
"""

from __future__ import annotations

import math
import threading

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Normalised scores are about N(0, 1) on the reference policy's responses; ±4 std covers
# them, and the open-ended outer buckets catch a shifted distribution.
_SCORES = (-4, -3, -2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5, 3, 4)

SCORES_SERVED = Counter(
    "clinalign_reward_scores",
    "Pairs scored, per model version.",
    ["model_version"],
)
BATCH_SIZE = Histogram(
    "clinalign_reward_batch_size",
    "Pairs per forward pass.",
    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512),
)
BATCH_REQUESTS = Histogram(
    "clinalign_reward_batch_requests",
    "Requests (Score calls and ScoreStream messages) whose pairs one forward pass scored.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
QUEUE_TIME = Histogram(
    "clinalign_reward_queue_time_seconds",
    "From a request's arrival at the batcher to the start of its first forward pass.",
    buckets=_LATENCY,
)
REQUEST_DURATION = Histogram(
    "clinalign_reward_request_duration_seconds",
    "From a request's arrival to its scores (validation, queueing and scoring).",
    ["model_version"],
    buckets=_LATENCY,
)
QUEUE_PAIRS = Gauge(
    "clinalign_reward_queue_pairs",
    "Pairs accepted and not yet answered, per model version.",
    ["model_version"],
)
SCORE = Histogram(
    "clinalign_reward_score",
    "Normalised scores served, per model version.",
    ["model_version"],
    buckets=_SCORES,
)
COST = Histogram(
    "clinalign_reward_cost",
    "Costs served (the cost model's probability of harm), per cost-model version.",
    ["model_version"],
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
)
SCORE_MEAN = Gauge(
    "clinalign_reward_score_mean",
    "Running mean of the normalised scores served, per model version.",
    ["model_version"],
)
SCORE_STD = Gauge(
    "clinalign_reward_score_std",
    "Running standard deviation of the normalised scores served, per model version.",
    ["model_version"],
)


class _Running:
    """Welford's online mean and variance (Welford 1962, Technometrics 4(3); Knuth, TAOCP
    vol. 2, 4.2.2), per model version."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


_running: dict[str, _Running] = {}
_lock = threading.Lock()


def observe_costs(version: str, costs: list[float]) -> None:
    """Records one forward pass's costs (called from the worker thread)."""
    SCORES_SERVED.labels(version).inc(len(costs))
    histogram = COST.labels(version)
    for c in costs:
        histogram.observe(c)


def observe_scores(version: str, scores: list[float]) -> None:
    """Records one forward pass's normalised scores (called from the worker thread)."""
    SCORES_SERVED.labels(version).inc(len(scores))
    histogram = SCORE.labels(version)
    for s in scores:
        histogram.observe(s)
    with _lock:
        running = _running.setdefault(version, _Running())
        for s in scores:
            running.add(s)
        mean, std = running.mean, running.std
    SCORE_MEAN.labels(version).set(mean)
    SCORE_STD.labels(version).set(std)
