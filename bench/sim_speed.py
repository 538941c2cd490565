"""Engine steps per wall-clock second in virtual-time mode, steady-state decode.

``batch`` requests (1024-token prompts, ``ignore_eos``, long outputs) are admitted and prefilled,
then ``steps`` pure-decode steps are timed: each step schedules every request, grows its KV
(a new block every 16 tokens, cached and published when full), prices the batch with the latency
model and returns one output per request. Runs on one core (pinned when the OS allows).

    .venv/bin/python bench/sim_speed.py [--batch 64] [--steps 20000] [--events] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time

from sluice.sim.engine import Engine, EngineConfig, SamplingParams, SimRequest
from sluice.sim.tokenizer import WordTokenizer, text_of_length


def build(batch: int, events: bool) -> tuple[Engine, list[int]]:
    sink_counts = [0]

    def sink(batch_events: list) -> None:
        sink_counts[0] += len(batch_events)

    engine = Engine(EngineConfig(), kv_event_sink=sink if events else None)
    tok = WordTokenizer()
    for i in range(batch):
        engine.add_request(
            SimRequest(
                f"r{i}",
                tok.encode(text_of_length(1024, seed=i)),
                SamplingParams(max_tokens=100_000, ignore_eos=True),
            )
        )
    while engine.stats.num_running < batch or engine.step().num_scheduled_tokens != batch:
        engine.step()
    return engine, sink_counts


def measure(batch: int, steps: int, events: bool) -> tuple[float, float, Engine]:
    """Steps per second of wall-clock time and of this process's CPU time.

    On a shared machine the CPU-time rate is the steadier one-core figure: it does not count the
    time the process waited for a core.
    """
    engine, _ = build(batch, events)
    step = engine.step
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert engine.stats.num_running == batch
    return steps / wall, steps / cpu, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--events", action="store_true", help="attach a KV-event sink")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.profile:
        engine, _ = build(args.batch, args.events)
        cProfile.runctx(
            "for _ in range(n): engine.step()",
            {"engine": engine, "n": args.steps},
            {},
            "/tmp/sim.prof",
        )
        pstats.Stats("/tmp/sim.prof").sort_stats("tottime").print_stats(15)
        return
    walls, cpus = [], []
    for _ in range(args.repeat):
        wall, cpu, engine = measure(args.batch, args.steps, args.events)
        walls.append(wall)
        cpus.append(cpu)
    mean_step_ms = engine.stats.busy_time_total / engine.stats.steps_total * 1e3
    print(
        f"batch={args.batch} steps={args.steps} events={args.events}\n"
        f"  wall-clock: best {max(walls):,.0f} steps/s, median {statistics.median(walls):,.0f} "
        f"({', '.join(f'{r:,.0f}' for r in walls)})\n"
        f"  cpu-time:   best {max(cpus):,.0f} steps/s, median {statistics.median(cpus):,.0f}\n"
        f"  tokens/s at best wall-clock: {max(walls) * args.batch:,.0f}; simulated "
        f"{engine.now:.1f} s of engine time, mean step {mean_step_ms:.2f} ms"
    )


if __name__ == "__main__":
    main()
