"""Prometheus metrics of admission (process-local; the gateway's /metrics exposes them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ADMISSIONS = Counter(
    "sluice_admission_decisions_total",
    "Admission outcomes by result (admitted, unauthenticated, forbidden, limited, unavailable).",
    ["result"],
)
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
