"""vLLM v1 Prometheus metrics of one simulated engine (names, labels and buckets as vLLM's).

Counters and gauges are read from the engine's own tallies at scrape time by a custom collector:
exact, and free on the request path. Histograms are observed by the runner as tokens are
delivered and requests finish, in simulated seconds. Each server has its own registry, so several
engines can live in one process (tests) without clashing.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


def buckets_1_2_5(limit: int) -> list[float]:
    """vLLM's ``build_1_2_5_buckets``: 1, 2, 5, 10, 20, 50, ... up to ``limit``."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > limit:
                return buckets
            buckets.append(float(value))
        exponent += 1


class StatsSource(Protocol):
    """What the collector reads from the engine's ``EngineStats``."""

    prompt_tokens_total: int
    generation_tokens_total: int
    prefix_cache_queries_total: int
    prefix_cache_hits_total: int
    num_preemptions_total: int
    request_success_total: Mapping[str, int]
    num_running: int
    num_waiting: int
    kv_cache_usage: float


@dataclass(slots=True)
class LoRAState:
    """``vllm:lora_requests_info`` labels: adapters of running and waiting requests."""

    max_lora: int
    running: Sequence[str]
    waiting: Sequence[str]


_COUNTERS = (
    ("vllm:prompt_tokens", "Number of prefill tokens processed.", "prompt_tokens_total"),
    ("vllm:generation_tokens", "Number of generation tokens processed.", "generation_tokens_total"),
    (
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        "prefix_cache_queries_total",
    ),
    (
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        "prefix_cache_hits_total",
    ),
    (
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        "num_preemptions_total",
    ),
)
_GAUGES = (
    ("vllm:num_requests_running", "Number of requests in model execution batches.", "num_running"),
    ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", "num_waiting"),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "kv_cache_usage"),
)


def _counters(
    table: Iterable[tuple[str, str, str]], source: object, labels: list[str]
) -> Iterable[Metric]:
    """One counter family per ``(name, doc, attribute of source)`` row."""
    for name, doc, attr in table:
        counter = CounterMetricFamily(name, doc, labels=["model_name", "engine"])
        counter.add_metric(labels, float(getattr(source, attr)))
        yield counter


class _EngineCollector(Collector):
    def __init__(
        self,
        stats: Callable[[], StatsSource],
        labels: tuple[str, str],
        cache_config: Mapping[str, str],
        lora_state: Callable[[], LoRAState],
    ) -> None:
        self._stats = stats
        self._labels = list(labels)
        self._cache_config = dict(cache_config)
        self._lora_state = lora_state
        self._lora_key: tuple[str, str, str] | None = None
        self._lora_changed_at = time.time()

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        names = ["model_name", "engine"]
        for name, doc, attr in _GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=names)
            gauge.add_metric(self._labels, float(getattr(stats, attr)))
            yield gauge
        yield from _counters(_COUNTERS, stats, self._labels)
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*names, "finished_reason"],
        )
        for reason in FINISHED_REASONS:
            count = stats.request_success_total.get(reason, 0)
            success.add_metric([*self._labels, reason], float(count))
        yield success
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=list(self._cache_config),
        )
        info.add_metric(list(self._cache_config.values()), 1.0)
        yield info
        yield self._lora_info()

    def _lora_info(self) -> Metric:
        state = self._lora_state()
        key = (str(state.max_lora), ",".join(state.running), ",".join(state.waiting))
        if key != self._lora_key:
            # vLLM's value is the time the label set was last updated.
            self._lora_key, self._lora_changed_at = key, time.time()
        gauge = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        gauge.add_metric(list(key), self._lora_changed_at)
        return gauge


class LightHistogram:
    """A histogram of one label set, observed in O(log buckets) without locks.

    The runner observes one inter-token sample per request per step, thousands per second on a
    busy server; ``prometheus_client.Histogram`` takes a lock and walks every bucket per sample.
    Everything runs on one event loop, so plain counters suffice.
    """

    __slots__ = ("buckets", "count", "counts", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.doc = doc
        self.buckets = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value

    def family(self, label_names: list[str], label_values: list[str]) -> Metric:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for edge, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            cumulative += n
            buckets.append((floatToGoString(edge), float(cumulative)))
        family = HistogramMetricFamily(self.name, self.doc, labels=label_names)
        family.add_metric(label_values, buckets, self.sum)
        return family


class _HistogramCollector(Collector):
    def __init__(self, labels: tuple[str, str]) -> None:
        self.histograms: list[LightHistogram] = []
        self._labels = list(labels)

    def collect(self) -> Iterable[Metric]:
        for histogram in self.histograms:
            yield histogram.family(["model_name", "engine"], self._labels)


@dataclass(slots=True)
class ClockLag:
    """How far the runner fell behind the wall clock (not a vLLM series: the simulator's own).

    A benchmark on a small machine is only valid while the engines keep their schedule; these
    say when they did not, so a run's tail can be told apart from CPU starvation.
    """

    steps: int = 0
    late_steps: int = 0  # steps whose outputs were delivered over LATE_STEP_S behind schedule
    late_seconds: float = 0.0  # wall seconds of that lateness, summed over late steps
    stall_seconds: float = 0.0  # wall seconds the simulated clock gave up (re-anchored)


LATE_STEP_S = 0.01


_CLOCK_COUNTERS = (
    ("sluice_sim_steps", "Engine steps run.", "steps"),
    (
        "sluice_sim_late_steps",
        f"Steps delivered over {LATE_STEP_S * 1000:g} ms (wall) behind schedule.",
        "late_steps",
    ),
    (
        "sluice_sim_late_seconds",
        "Wall seconds late steps were behind schedule, summed.",
        "late_seconds",
    ),
    (
        "sluice_sim_clock_stall_seconds",
        "Wall seconds the simulated clock stalled because the machine could not keep up.",
        "stall_seconds",
    ),
)


class _ClockCollector(Collector):
    def __init__(self, lag: ClockLag, labels: tuple[str, str]) -> None:
        self._lag = lag
        self._labels = list(labels)

    def collect(self) -> Iterable[Metric]:
        return _counters(_CLOCK_COUNTERS, self._lag, self._labels)


class EngineMetrics:
    """The metrics of one engine server; ``render()`` is the ``/metrics`` body."""

    def __init__(
        self,
        stats: Callable[[], StatsSource],
        *,
        model_name: str,
        max_model_len: int,
        cache_config: Mapping[str, Any],
        lora_state: Callable[[], LoRAState],
        engine_index: int = 0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        labels = (model_name, str(engine_index))
        cache_labels = {k: str(v) for k, v in cache_config.items()}
        cache_labels["engine"] = str(engine_index)
        self.registry.register(_EngineCollector(stats, labels, cache_labels, lora_state))
        self.clock = ClockLag()
        self.registry.register(_ClockCollector(self.clock, labels))
        histograms = _HistogramCollector(labels)
        self.registry.register(histograms)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> LightHistogram:
            metric = LightHistogram(name, doc, buckets)
            histograms.histograms.append(metric)
            return metric

        token_buckets = buckets_1_2_5(max_model_len)
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )  # fmt: skip
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )  # fmt: skip
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )  # fmt: skip
        self.queue = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.",
            token_buckets,
        )  # fmt: skip

    def observe_step_delay(self, delay: float, stalled: bool) -> None:
        """``delay``: wall seconds from a step's end until its scheduled time (< 0: late)."""
        clock = self.clock
        clock.steps += 1
        if delay < -LATE_STEP_S:
            clock.late_steps += 1
            clock.late_seconds -= delay
        if stalled:
            clock.stall_seconds -= delay

    def observe_first_token(self, ttft: float) -> None:
        self.ttft.observe(ttft)

    def observe_inter_token(self, gap: float) -> None:
        self.itl.observe(gap)

    def observe_finished(
        self,
        *,
        arrival: float,
        first_scheduled: float | None,
        first_token: float | None,
        finished: float,
        prompt_tokens: int,
        generation_tokens: int,
    ) -> None:
        """One finished (not aborted) request; all times in simulated seconds."""
        self.e2e.observe(max(0.0, finished - arrival))
        self.prompt_tokens.observe(prompt_tokens)
        self.generation_tokens.observe(generation_tokens)
        if first_scheduled is not None:
            self.queue.observe(max(0.0, first_scheduled - arrival))
            self.inference.observe(max(0.0, finished - first_scheduled))
            if first_token is not None:
                self.prefill.observe(max(0.0, first_token - first_scheduled))
        if first_token is not None:
            decode = max(0.0, finished - first_token)
            self.decode.observe(decode)
            if generation_tokens > 1:
                self.tpot.observe(decode / (generation_tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
