"""Random prompts with no reuse: the control that isolates load balancing from cache affinity."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sluice.bench.arrivals import make_arrivals
from sluice.bench.workloads.base import (
    DEFAULT_SPACE,
    TokenSpace,
    WorkloadRequest,
    content_key,
    tokens,
)


@dataclass(frozen=True, slots=True)
class RandomConfig:
    num_requests: int = 500
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0  # lengths uniform in [len*(1-r), len*(1+r)], as vllm bench's random
    rate: float = 8.0
    arrival_process: str = "poisson"
    burstiness: float = 1.0
    seed: int = 0


def _length(rng: random.Random, mean: int, ratio: float) -> int:
    lo = max(1, int(mean * (1 - ratio)))
    hi = max(lo, int(mean * (1 + ratio)))
    return rng.randint(lo, hi)


def random_control(cfg: RandomConfig, space: TokenSpace = DEFAULT_SPACE) -> list[WorkloadRequest]:
    rng = random.Random(cfg.seed)
    times = make_arrivals(
        cfg.arrival_process, cfg.rate, cfg.num_requests, cfg.burstiness, cfg.seed + 1
    )
    out = []
    for i, t in enumerate(times):
        n_in = _length(rng, cfg.input_len, cfg.range_ratio)
        n_out = _length(rng, cfg.output_len, cfg.range_ratio)
        out.append(
            WorkloadRequest(
                request_id=f"rnd-{i}",
                arrival=t,
                prompt=tokens(cfg.seed, content_key("rnd", i), n_in, space),
                max_tokens=n_out,
            )
        )
    return out
