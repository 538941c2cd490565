"""Prefix affinity with a load guard, in the style of SGLang's ``cache_aware`` router.

1. If the fleet is imbalanced (``max - min > balance_abs`` AND ``max > balance_rel x min`` on
   outstanding requests), go to the least-loaded endpoint.
2. Else, if the best prefix match covers more than ``cache_threshold`` of the prompt and that
   endpoint is not saturated (KV usage under ``kv_saturation`` and fewer than
   ``max_waiting`` requests queued in the engine), go there: a hot prefix spills over.
3. Else (a miss) go to the least-loaded endpoint -- never to the emptiest index, which piles
   every new prefix on one idle-looking engine (SGLang #14305/#14532).

``own_load=True`` counts only the router's own in-flight requests (not the engine's queue) and,
with the saturation guard off (``kv_saturation`` above 1, ``max_waiting`` 0) and an index not
bounded by the engines' KV size (``bounded=False``; SGLang's tree holds 2^26 characters per
worker), is SGLang's router as published: the benchmark's stand-in for it in the cluster
simulator, where it lands within a few percent of the real ``sglang-router`` over HTTP
(bench/results/routing.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from sluice.routing.cache_aware import CacheAwarePolicy
from sluice.routing.endpoint import EndpointState
from sluice.routing.facts import RequestFacts
from sluice.routing.policy import Decision, register_policy
from sluice.routing.prefix_index import PrefixIndex


class PrefixAffinity(CacheAwarePolicy):
    name = "prefix_affinity"

    def __init__(
        self,
        index: PrefixIndex | None = None,
        learn: bool = True,
        cache_threshold: float = 0.3,
        balance_abs: int = 64,
        balance_rel: float = 1.5,
        kv_saturation: float = 0.95,
        max_waiting: int = 10,
        own_load: bool = False,
        bounded: bool = True,
        free_queue: bool = False,
    ) -> None:
        super().__init__(index, learn, bounded, free_queue)
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.kv_saturation = kv_saturation
        self.max_waiting = max_waiting
        self.own_load = own_load

    def _load(self, c: EndpointState) -> int:
        return c.in_flight if self.own_load else c.load()

    def _saturated(self, c: EndpointState) -> bool:
        return c.kv_usage >= self.kv_saturation or 0 < self.max_waiting <= c.waiting

    def _imbalanced(self, high: int, low: int) -> bool:
        return high - low > self.balance_abs and high > self.balance_rel * low

    def choose(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision:
        view = self.view(facts, candidates)
        scores = {c.id: round(view.fraction(c.id), 3) for c in candidates}
        load = self._load
        calm = min(candidates, key=lambda c: (load(c), c.running, c.kv_usage))
        low = load(calm)
        high = max(load(c) for c in candidates)
        if self._imbalanced(high, low):
            return self.decision(calm, view, f"imbalanced (load {high} vs {low})", scores)
        best = max(candidates, key=lambda c: (view.depths.get(c.id, 0), -load(c), -c.kv_usage))
        ratio = view.fraction(best.id)
        if ratio <= self.cache_threshold:
            return self.decision(calm, view, f"miss (best match {ratio:.2f}): least load", scores)
        if self._saturated(best):
            reason = f"match {ratio:.2f} on saturated {best.id}: least load"
            return self.decision(calm, view, reason, scores)
        return self.decision(best, view, f"prefix match {ratio:.2f}", scores)


register_policy(PrefixAffinity.name, PrefixAffinity)
