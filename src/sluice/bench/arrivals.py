"""Arrival processes: seeded, pure, in seconds from the start of the run."""

from __future__ import annotations

import random
from collections.abc import Sequence


def gamma_arrivals(rate: float, count: int, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """``count`` arrival times with gamma-distributed gaps of mean ``1/rate``.

    ``burstiness`` is the gamma shape, as in ``vllm bench serve``: 1 is a Poisson process, below 1
    is burstier, above 1 more regular. ``rate`` = inf sends everything at time 0.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if burstiness <= 0:
        raise ValueError("burstiness must be positive")
    if rate == float("inf"):
        return [0.0] * count
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    scale = 1.0 / (rate * burstiness)
    t = 0.0
    times = []
    for _ in range(count):
        times.append(t)
        t += rng.gammavariate(burstiness, scale)
    return times


def poisson_arrivals(rate: float, count: int, seed: int = 0) -> list[float]:
    """A Poisson process (exponential gaps) starting at 0."""
    return gamma_arrivals(rate, count, 1.0, seed)


def constant_arrivals(rate: float, count: int) -> list[float]:
    if rate <= 0:
        raise ValueError("rate must be positive")
    return [i / rate for i in range(count)]


def trace_arrivals(timestamps_ms: Sequence[float], speedup: float = 1.0) -> list[float]:
    """Trace-timed arrivals: timestamps (ms) shifted to start at 0, divided by ``speedup``."""
    if speedup <= 0:
        raise ValueError("speedup must be positive")
    if not timestamps_ms:
        return []
    t0 = min(timestamps_ms)
    return [(t - t0) / 1000.0 / speedup for t in timestamps_ms]


def make_arrivals(
    process: str, rate: float, count: int, burstiness: float = 1.0, seed: int = 0
) -> list[float]:
    """By name: ``poisson``, ``gamma`` (uses ``burstiness``) or ``constant``."""
    if process == "poisson":
        return poisson_arrivals(rate, count, seed)
    if process == "gamma":
        return gamma_arrivals(rate, count, burstiness, seed)
    if process == "constant":
        return constant_arrivals(rate, count)
    raise ValueError(f"unknown arrival process {process!r}; known: poisson, gamma, constant")
