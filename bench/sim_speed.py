"""Engine steps per wall-clock second in virtual-time mode, batch 64, on one core.

Two steady states, both with 1024-token prompts and ``ignore_eos``:

* ``closed-loop`` (default): ``batch`` requests of 1024 output tokens; whenever one finishes a new
  one arrives, so the engine always holds ``batch`` requests, mostly decoding, with a prefill mixed
  in about every 16 steps — what a saturated engine does. Contexts stay between 1k and 2k tokens.
* ``decode``: ``batch`` requests decode without end; no arrivals at all. Only ``--steps`` up to
  ~5,000 fit in an H100's KV cache before preemption would start.

Every step schedules the batch, grows KV (a block every 16 tokens per request, cached and, with
``--events``, published when full), prices the batch with the latency model and returns one
output per request. The process is pinned to one core when the OS allows.

    .venv/bin/python bench/sim_speed.py [--mode closed-loop|decode] [--batch 64] [--steps N]
                                        [--repeat 5] [--events] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import time
from collections.abc import Callable

from sluice.sim.engine import Engine, EngineConfig, SamplingParams, SimRequest
from sluice.sim.kv_events import KVEvent

PROMPT_TOKENS = 1024
OUTPUT_TOKENS = 1024


class Workload:
    """Prompts made before the clock starts, so the harness costs next to nothing per request."""

    def __init__(self, mode: str, batch: int, steps: int) -> None:
        self.mode = mode
        rng = random.Random(0)
        count = batch + (steps * batch // OUTPUT_TOKENS + batch if mode == "closed-loop" else 0)
        self.prompts = [
            [rng.randrange(80, 128000) for _ in range(PROMPT_TOKENS)] for _ in range(count)
        ]
        self.next = 0
        max_tokens = OUTPUT_TOKENS if mode == "closed-loop" else 100_000
        self.sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)

    def submit(self, engine: Engine) -> None:
        i = self.next
        self.next += 1
        engine.add_request(SimRequest(f"r{i}", self.prompts[i], self.sampling))


def build(mode: str, batch: int, steps: int, events: bool) -> tuple[Engine, Workload]:
    sink: Callable[[list[KVEvent]], None] | None = (lambda evs: None) if events else None
    engine = Engine(EngineConfig(), kv_event_sink=sink)
    workload = Workload(mode, batch, steps)
    for _ in range(batch):
        workload.submit(engine)
    while engine.step().num_scheduled_tokens != batch:  # until every prompt is prefilled
        pass
    return engine, workload


def run_steps(engine: Engine, workload: Workload, steps: int) -> None:
    step = engine.step
    if workload.mode == "decode":
        for _ in range(steps):
            step()
        return
    for _ in range(steps):
        for out in step().outputs:
            if out.finished:
                workload.submit(engine)


def measure(mode: str, batch: int, steps: int, events: bool) -> tuple[float, float, Engine]:
    """Steps per second of wall-clock time and of this process's CPU time.

    On a shared machine the CPU-time rate is the steadier one-core figure: it does not count the
    time the process waited for a core.
    """
    engine, workload = build(mode, batch, steps, events)
    wall, cpu = time.perf_counter(), time.process_time()
    run_steps(engine, workload, steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if engine.stats.num_running != batch or engine.stats.num_preemptions_total:
        raise SystemExit("not a steady state: requests were preempted or the batch shrank")
    return steps / wall, steps / cpu, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["closed-loop", "decode"], default="closed-loop")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="20000 closed-loop, 5000 decode")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--events", action="store_true", help="attach a KV-event sink")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    steps = args.steps or (20_000 if args.mode == "closed-loop" else 5_000)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.profile:
        engine, workload = build(args.mode, args.batch, steps, args.events)
        profile = cProfile.Profile()
        profile.runcall(run_steps, engine, workload, steps)
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        return
    walls, cpus = [], []
    for _ in range(args.repeat):
        wall, cpu, engine = measure(args.mode, args.batch, steps, args.events)
        walls.append(wall)
        cpus.append(cpu)
    stats = engine.stats
    mean_step_ms = stats.busy_time_total / stats.steps_total * 1e3
    print(
        f"mode={args.mode} batch={args.batch} steps={steps} events={args.events}\n"
        f"  wall-clock: best {max(walls):,.0f} steps/s, median {statistics.median(walls):,.0f} "
        f"({', '.join(f'{r:,.0f}' for r in walls)})\n"
        f"  cpu-time:   best {max(cpus):,.0f} steps/s, median {statistics.median(cpus):,.0f}\n"
        f"  last run: {stats.generation_tokens_total:,} tokens generated, "
        f"{stats.request_success_total['length']:,} requests finished, "
        f"simulated {engine.now:.1f} s (mean step {mean_step_ms:.2f} ms)"
    )


if __name__ == "__main__":
    main()
