"""What a cluster-simulator run returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from sluice.bench.metrics import (
    DEFAULT_SLO,
    SLO,
    LogHistogram,
    RequestRecord,
    Summary,
    hit_rate,
    summarize,
)


@dataclass(slots=True)
class EngineReport:
    endpoint: str
    requests: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    steps: int = 0
    busy_time: float = 0.0
    peak_running: int = 0
    peak_waiting: int = 0


@dataclass(slots=True)
class RunResult:
    """Per-request records (simulated seconds), ITL histogram and per-engine totals."""

    policy: str
    records: list[RequestRecord]
    itl: LogHistogram
    engines: list[EngineReport]
    sim_time: float
    wall_time: float
    events: int
    cpu_time: float = 0.0  # this process's CPU seconds: the speed figure on a shared machine
    load_series: list[tuple[float, list[int]]] = field(default_factory=list)

    @property
    def prefix_hit_rate(self) -> float | None:
        queries = sum(e.prefix_queries for e in self.engines)
        hits = sum(e.prefix_hits for e in self.engines)
        return hit_rate(queries, hits)

    def summary(self, slo: SLO = DEFAULT_SLO) -> Summary:
        s = summarize(self.records, slo, self.itl, self.prefix_hit_rate)
        s.extra.update(
            wall_time_s=self.wall_time,
            cpu_time_s=self.cpu_time,
            sim_time_s=self.sim_time,
            events=float(self.events),
            engines=float(len(self.engines)),
        )
        return s
