"""Small routing plugins, one job each: filters drop candidates, scorers rate them in [0, 1].

A policy is a composition of these, named in config (``routing.weighted``), as in llm-d's
endpoint picker. Every plugin sees the same ``CacheView``, so the index is read once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sluice.routing.cache_aware import CacheView
from sluice.routing.endpoint import EndpointState

Scorer = Callable[[Sequence[EndpointState], CacheView], dict[str, float]]


def _spread(values: dict[str, float]) -> dict[str, float]:
    """Lower is better -> 1 for the lowest, 0 for the highest, linear between."""
    low, high = min(values.values()), max(values.values())
    if high == low:
        return dict.fromkeys(values, 1.0)
    return {k: (high - v) / (high - low) for k, v in values.items()}


def prefix_scorer(candidates: Sequence[EndpointState], view: CacheView) -> dict[str, float]:
    """Share of the prompt's blocks already cached there."""
    return {c.id: view.fraction(c.id) for c in candidates}


def load_scorer(candidates: Sequence[EndpointState], view: CacheView) -> dict[str, float]:
    """Fewest outstanding requests (gateway in-flight + engine waiting)."""
    return _spread({c.id: float(c.load()) for c in candidates})


def kv_usage_scorer(candidates: Sequence[EndpointState], view: CacheView) -> dict[str, float]:
    """Most free KV cache."""
    return {c.id: max(0.0, 1.0 - c.kv_usage) for c in candidates}


def prefill_scorer(candidates: Sequence[EndpointState], view: CacheView) -> dict[str, float]:
    """Least prefill work ahead of and including this request (queued + its uncached part)."""
    return _spread(
        {c.id: float(c.in_flight_prefill_tokens + view.uncached_tokens(c.id)) for c in candidates}
    )


SCORERS: dict[str, Scorer] = {
    "prefix": prefix_scorer,
    "load": load_scorer,
    "kv_usage": kv_usage_scorer,
    "prefill": prefill_scorer,
}


@dataclass(frozen=True, slots=True)
class SaturationFilter:
    """Drop endpoints whose engine queue or KV cache is full, unless that would drop them all."""

    max_waiting: int = 10
    kv_saturation: float = 0.95

    def __call__(self, candidates: Sequence[EndpointState]) -> list[EndpointState]:
        keep = [
            c
            for c in candidates
            if c.waiting < self.max_waiting and c.kv_usage < self.kv_saturation
        ]
        return keep or list(candidates)
