"""GCRA (generic cell rate algorithm) arithmetic for one rate bucket. PURE: callers pass ``now``.

A bucket allows ``limit`` units per ``period`` seconds. Its whole state is one number, the
theoretical arrival time ``tat``: the instant at which the bucket is back to full capacity. A
reservation of ``cost`` units moves ``tat`` forward by ``cost * period / limit``; it fits while
``tat - now`` stays within ``period``. Unlike a fixed window there is no boundary at which a second
full burst becomes available: in any interval of length ``t`` at most ``limit * (1 + t / period)``
units pass, and a burst never exceeds ``limit``.

A reservation larger than the whole limit is admitted only when the bucket is at full capacity, so
a burst overshoots by at most one such request. Settling moves ``tat`` back by the unused units.
The Redis Lua script (``reserve.lua``) implements exactly this arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EPS = 1e-9  # float slack at the limit (the in-process fast path uses it too)


@dataclass(frozen=True, slots=True)
class Outcome:
    allowed: bool
    tat: float  # the bucket's state after this step (unchanged when refused)
    remaining: int  # units still available right now
    reset_after: float  # seconds until the bucket is back to full capacity
    retry_after: float  # seconds until this reservation would fit (0 when allowed)


def check(tat: float, now: float, cost: float, limit: int, period: float) -> Outcome:
    """Try to reserve ``cost`` units at ``now``. Returns the new state; does not mutate."""
    interval = period / limit
    base = max(tat, now)
    new_tat = base + cost * interval
    if new_tat - now <= period + EPS or base <= now:
        used = new_tat - now
        return Outcome(True, new_tat, _remaining(period - used, interval), used, 0.0)
    # Larger than the whole limit: wait until the bucket is full again.
    retry = base - now if cost * interval > period else new_tat - period - now
    return Outcome(False, tat, _remaining(period - (base - now), interval), base - now, retry)


def refund(tat: float, units: float, limit: int, period: float) -> float:
    """Give back ``units`` (negative: charge more) after the real usage is known."""
    return tat - units * (period / limit)


def _remaining(free_seconds: float, interval: float) -> int:
    return max(0, math.floor(free_seconds / interval + EPS))
