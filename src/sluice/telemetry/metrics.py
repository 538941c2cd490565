"""Gateway metrics on their own Prometheus registry (names documented in docs/metrics.md).

Per-request series are label children cached in dicts, so the hot path does one dict lookup and
one ``inc``/``observe`` each. Endpoint gauges (up, in-flight, ejected, engine load) are not updated
per request at all: a collector reads the endpoint states when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sluice.routing import EndpointState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets: sub-millisecond for the gateway's own work, up to minutes for generations.
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_DECISION_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
)  # fmt: skip


class GatewayMetrics:
    def __init__(self, endpoints: Callable[[], Sequence[EndpointState]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        self.requests = Counter(
            "sluice_requests",
            "Requests finished, by model, endpoint and HTTP status.",
            ["model", "endpoint", "status"],
            registry=reg,
        )
        self.e2e = Histogram(
            "sluice_request_duration_seconds",
            "End-to-end request latency seen by the gateway.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "sluice_time_to_first_token_seconds",
            "Time from request arrival to the first body byte from the engine.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            "sluice_tokens",
            "Tokens by kind (prompt, completion, cached) as reported by the engines.",
            ["model", "kind"],
            registry=reg,
        )
        self.retries = Counter(
            "sluice_upstream_retries",
            "Attempts retried on another endpoint before the first byte, by failed endpoint.",
            ["endpoint", "reason"],
            registry=reg,
        )
        self.ejections = Counter(
            "sluice_endpoint_ejections",
            "Times an endpoint was ejected by passive outlier detection.",
            ["endpoint"],
            registry=reg,
        )
        self.decision = Histogram(
            "sluice_routing_decision_seconds",
            "Time spent in the routing policy per pick.",
            buckets=_DECISION_BUCKETS,
            registry=reg,
        )
        self.in_flight = 0
        reg.register(_StateCollector(endpoints, lambda: self.in_flight))
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._model_children: dict[str, tuple[Histogram, Histogram, Counter, Counter, Counter]] = {}

    def observe_request(
        self,
        model: str,
        endpoint: str,
        status: int,
        e2e: float,
        ttft: float | None,
        prompt: int,
        completion: int,
        cached: int,
    ) -> None:
        key = (model, endpoint, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self.requests.labels(model, endpoint, str(status))
            self._request_children[key] = counter
        counter.inc()
        children = self._model_children.get(model)
        if children is None:
            children = (
                self.e2e.labels(model),
                self.ttft.labels(model),
                self.tokens.labels(model, "prompt"),
                self.tokens.labels(model, "completion"),
                self.tokens.labels(model, "cached"),
            )
            self._model_children[model] = children
        e2e_h, ttft_h, prompt_c, completion_c, cached_c = children
        e2e_h.observe(e2e)
        if ttft is not None:
            ttft_h.observe(ttft)
        if prompt:
            prompt_c.inc(prompt)
        if completion:
            completion_c.inc(completion)
        if cached:
            cached_c.inc(cached)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Reads endpoint states at scrape time: zero cost per request."""

    def __init__(
        self, endpoints: Callable[[], Sequence[EndpointState]], in_flight: Callable[[], int]
    ) -> None:
        self._endpoints = endpoints
        self._in_flight = in_flight

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = time.monotonic()
        up = GaugeMetricFamily("sluice_endpoint_up", "1 if routable now.", labels=["endpoint"])
        ejected = GaugeMetricFamily(
            "sluice_endpoint_ejected", "1 while ejected by outlier detection.", labels=["endpoint"]
        )
        in_flight = GaugeMetricFamily(
            "sluice_endpoint_in_flight", "Requests the gateway has open.", labels=["endpoint"]
        )
        running = GaugeMetricFamily(
            "sluice_endpoint_running", "Engine-reported running requests.", labels=["endpoint"]
        )
        waiting = GaugeMetricFamily(
            "sluice_endpoint_waiting", "Engine-reported waiting requests.", labels=["endpoint"]
        )
        kv = GaugeMetricFamily(
            "sluice_endpoint_kv_cache_usage", "Engine-reported KV usage 0-1.", labels=["endpoint"]
        )
        for state in self._endpoints():
            label = [state.id]
            up.add_metric(label, 1.0 if state.available(now) else 0.0)
            ejected.add_metric(label, 1.0 if state.ejected_until > now else 0.0)
            in_flight.add_metric(label, float(state.in_flight))
            running.add_metric(label, float(state.running))
            waiting.add_metric(label, float(state.waiting))
            kv.add_metric(label, state.kv_usage)
        yield from (up, ejected, in_flight, running, waiting, kv)
        total = GaugeMetricFamily("sluice_requests_in_flight", "Requests inside the gateway now.")
        total.add_metric([], float(self._in_flight()))
        yield total
