"""Weighted scorers, in the style of llm-d: filter, score, sum by weight, pick the maximum."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sluice.routing.cache_aware import CacheAwarePolicy, least_loaded
from sluice.routing.endpoint import EndpointState
from sluice.routing.facts import RequestFacts
from sluice.routing.policy import Decision, register_policy
from sluice.routing.prefix_index import PrefixIndex
from sluice.routing.scorers import SCORERS, SaturationFilter

# llm-d's documented default mix: prefix 3, queue 2, KV-cache utilization 2.
DEFAULT_WEIGHTS = {"prefix": 3.0, "load": 2.0, "kv_usage": 2.0}


class WeightedScorers(CacheAwarePolicy):
    name = "weighted"

    def __init__(
        self,
        index: PrefixIndex | None = None,
        learn: bool = True,
        weights: Mapping[str, float] | None = None,
        max_waiting: int = 10,
        kv_saturation: float = 0.95,
        free_queue: bool = False,
    ) -> None:
        super().__init__(index, learn, free_queue=free_queue)
        chosen = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(chosen) - set(SCORERS))
        if unknown:
            raise ValueError(f"unknown scorers {unknown}; known: {sorted(SCORERS)}")
        self.weights = {name: w for name, w in chosen.items() if w}
        self.saturation = SaturationFilter(max_waiting, kv_saturation)

    def choose(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision:
        kept = self.saturation(candidates)
        view = self.view(facts, kept)
        total = dict.fromkeys((c.id for c in kept), 0.0)
        for name, weight in self.weights.items():
            for endpoint_id, s in SCORERS[name](kept, view).items():
                total[endpoint_id] += weight * s
        top = max(total.values())
        # Ties (e.g. an empty index and equal load) go to the least loaded, not the first listed.
        chosen = least_loaded([c for c in kept if total[c.id] >= top - 1e-9])
        dropped = len(candidates) - len(kept)
        reason = "weighted " + "+".join(f"{w:g}*{n}" for n, w in self.weights.items())
        if dropped:
            reason += f"; {dropped} saturated filtered"
        return self.decision(chosen, view, reason, {k: round(v, 3) for k, v in total.items()})


register_policy(WeightedScorers.name, WeightedScorers)
