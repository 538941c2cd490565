"""Reproduce the fidelity figures of docs/simulator.md: latency model vs reference and measurements.

1. The reference's prediction table (Llama-3.1-8B, η_m = 0.8, η_f = 0.7, t_cpu = 0.5 ms), cell by
   cell, with the model's relative error.
2. The published measurements of the reference's cross-check, with our assumed contexts.
3. A scheduler-level check: a ShareGPT-shaped synthetic workload (1000 requests, log-normal lengths
   with means 220 in / 200 out, all arriving at once) on one H100 engine; median and P99 ITL
   against PR #18566's 25 ms / 214 ms on the real dataset.

    .venv/bin/python bench/sim_fidelity.py
"""

from __future__ import annotations

import math
import random

from sluice.sim.engine import Engine, EngineConfig, SamplingParams, SimRequest
from sluice.sim.latency import LatencyModel
from sluice.sim.profiles import get_gpu, get_model

GPUS = ["h100", "h200", "a100-80gb", "a100-40gb", "l40s", "a10"]
TABLE = {  # reference §5 "Model predictions", ms
    "decode, batch 1": ([6.5, 4.7, 10.4, 13.5, 23.9, 34.2], lambda lm: lm.decode_time(1, 0)),
    "decode, batch 64, 1152 ctx": (
        [10.2, 7.3, 16.9, 21.6, 37.9, 55.2],
        lambda lm: lm.decode_time(64, 1152),
    ),
    "prefill 1k": ([24, 24, 73, 73, 66, 182], lambda lm: lm.prefill_time(1024)),
    "prefill 4k": ([96, 96, 302, 302, 261, 754], lambda lm: lm.prefill_time(4096)),
}
MEASURED = [  # (case, GPU, batch, context, measured ms)
    ("A100-40GB conc. 1 decode (vLLM 0.23)", "a100-40gb", 1, 1024, 13.3),
    ("H100 conc. 1 TPOT p50 (vLLM 0.21)", "h100", 1, 1024, 6.48),
    ("H100 ShareGPT ITL p50, moderate load", "h100", 8, 400, 6.5),
    ("H100 10 concurrent (vLLM 0.6.0)", "h100", 10, 1024, 7.4),
]


def pct(model: float, reference: float) -> str:
    return f"{(model - reference) / reference * 100:+.1f}%"


def prediction_table() -> None:
    print("| Llama-3.1-8B (model / reference ms) | " + " | ".join(GPUS) + " |")
    for row, (reference, fn) in TABLE.items():
        cells = []
        for gpu, ref in zip(GPUS, reference, strict=True):
            ms = fn(LatencyModel(get_gpu(gpu), get_model("llama-3.1-8b"))) * 1e3
            cells.append(f"{ms:.1f} / {ref} ({pct(ms, ref)})")
        print(f"| {row} | " + " | ".join(cells) + " |")


def cross_check() -> None:
    for case, gpu, batch, context, measured in MEASURED:
        lm = LatencyModel(get_gpu(gpu), get_model("llama-3.1-8b"))
        ms = lm.decode_time(batch, context) * 1e3
        print(f"{case}: measured {measured} ms, model {ms:.2f} ms ({pct(ms, measured)})")
    lm = LatencyModel(get_gpu("h100"), get_model("llama-3.1-8b"))
    chunk = lm.prefill_time(8192) * 1e3
    print(
        f"H100 8k-token prefill chunk (P99 ITL, PR #18566): measured 214 ms, model {chunk:.1f} ms"
    )
    ttft = (lm.calibration.api_overhead + lm.prefill_time(256)) * 1e3
    print(f"H100 TTFT at low load, 256 tokens: measured 14-29 ms, model {ttft:.1f} ms")


def lognormal(rng: random.Random, mean: float, sigma: float = 1.0) -> int:
    mu = math.log(mean) - sigma**2 / 2
    return max(4, min(8000, int(rng.lognormvariate(mu, sigma))))


def sharegpt_shaped(seed: int = 1) -> None:
    rng = random.Random(seed)
    engine = Engine(EngineConfig())
    for i in range(1000):
        prompt = [rng.randrange(80, 128000) for _ in range(lognormal(rng, 220))]
        sampling = SamplingParams(max_tokens=lognormal(rng, 200), ignore_eos=True)
        engine.add_request(SimRequest(f"r{i}", prompt, sampling))
    last: dict[str, float] = {}
    itl: list[float] = []
    while engine.has_unfinished():
        for out in engine.step().outputs:
            if out.request_id in last:
                itl.append(engine.now - last[out.request_id])
            last[out.request_id] = engine.now
    itl.sort()
    p50, p99 = itl[len(itl) // 2] * 1e3, itl[int(0.99 * (len(itl) - 1))] * 1e3
    print(
        f"ShareGPT-shaped, rate inf, H100: ITL p50 {p50:.1f} ms (measured 25, {pct(p50, 25)}), "
        f"p99 {p99:.1f} ms (measured 214, {pct(p99, 214)}); "
        f"{engine.stats.num_preemptions_total} preemptions, {engine.now:.1f} s simulated"
    )


if __name__ == "__main__":
    prediction_table()
    cross_check()
    sharegpt_shaped()
