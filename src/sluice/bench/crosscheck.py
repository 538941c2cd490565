"""Cross-check: the same workload through the cluster simulator and through real HTTP
(load runner → gateway process → ``sluice sim`` engine processes). Both report simulated seconds;
they should agree on TTFT p50 and throughput when the machine keeps up with the time scale.
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sluice.bench.cluster import simulate
from sluice.bench.metrics import RequestRecord, Summary, summarize
from sluice.bench.procs import free_port, gateway_command, probe_models, stop, wait_ready
from sluice.bench.runner import HttpOptions, HttpRunResult, run_http
from sluice.bench.workloads.base import WorkloadRequest
from sluice.sim.launch import start_engines

MODEL = "sim-model"


@dataclass(slots=True)
class CrossCheck:
    http: Summary
    sim: Summary
    http_result: HttpRunResult
    sim_records: list[RequestRecord]

    @staticmethod
    def rel(a: float, b: float) -> float:
        return abs(a - b) / abs(b) if b else float("inf")

    @property
    def ttft_p50_diff(self) -> float:
        return self.rel(self.http.ttft_p50, self.sim.ttft_p50)

    @property
    def throughput_diff(self) -> float:
        return self.rel(self.http.output_throughput, self.sim.output_throughput)


def run_crosscheck(
    workload: list[WorkloadRequest],
    *,
    engines: int = 2,
    policy: str = "round_robin",
    time_scale: float = 2.0,
    gateway_scrape_s: float = 0.25,
    log_path: Path | None = None,
) -> CrossCheck:
    with start_engines(engines, time_scale=time_scale, served_model_name=MODEL) as fleet:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            gateway_command(port, policy, fleet.urls), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            error = wait_ready(base, proc, MODEL, 60.0, check=probe_models)
            if error:
                raise RuntimeError(f"gateway not ready: {error}")
            opts = HttpOptions(base_url=base, model=MODEL, time_scale=time_scale,
                               engine_urls=fleet.urls)  # fmt: skip
            result = asyncio.run(run_http(workload, opts))
        finally:
            stop(proc)
            if log_path:
                log.close()  # type: ignore[union-attr]
    http = summarize(result.records, prefix_hit_rate=result.prefix_hit_rate)
    sim = simulate(
        workload,
        engines=engines,
        policy=policy,
        model=MODEL,
        scrape_interval=gateway_scrape_s / time_scale,
    )
    return CrossCheck(http, sim.summary(), result, sim.records)
