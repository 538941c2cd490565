"""Prometheus metrics of admission (process-local; the gateway's /metrics exposes them)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class _Decisions(Collector):
    """``sluice_admission_decisions_total{result}``: plain integers, read when scraped.

    Counted once per admitted request, so cheaper than a ``Counter`` child (which takes a lock
    per increment); admission runs on the gateway's event loop thread only."""

    name = "sluice_admission_decisions"
    documentation = (
        "Admission outcomes by result (admitted, unauthenticated, forbidden, limited, unavailable)."
    )

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def labels(self, result: str) -> _Result:
        return _Result(self, result)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["result"])
        for result, count in self.counts.items():
            family.add_metric([result], count)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=["result"])


class _Result:
    __slots__ = ("_counts", "_result")

    def __init__(self, parent: _Decisions, result: str) -> None:
        self._counts = parent.counts
        self._result = result
        self._counts.setdefault(result, 0)

    def inc(self, amount: int = 1) -> None:
        self._counts[self._result] += amount


ADMISSIONS = _Decisions()
LIMITER_BACKEND_ERRORS = Counter(
    "sluice_admission_limiter_backend_errors_total",
    "Shared limiter (Redis) calls that failed, by the configured behaviour (open or closed).",
    ["mode"],
)
LIMITER_DEGRADED = Gauge(
    "sluice_admission_limiter_degraded",
    "1 while the shared limiter is unreachable and the fallback behaviour applies.",
)
QUEUE_DEPTH = Gauge(
    "sluice_admission_queue_depth", "Requests held in the priority queue.", ["priority"]
)
QUEUE_WAIT = Histogram(
    "sluice_admission_queue_wait_seconds",
    "Time requests spent in the priority queue, by priority and outcome.",
    ["priority", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUEUE_REJECTIONS = Counter(
    "sluice_admission_queue_rejections_total",
    "Requests refused by the priority queue, by reason (full, evicted, timeout).",
    ["priority", "reason"],
)
