"""Prefix affinity with a load guard, in the style of SGLang's ``cache_aware`` router.

1. If the fleet is imbalanced (``max - min > balance_abs`` AND ``max > balance_rel x min`` on
   outstanding requests), go to the least-loaded endpoint.
2. Else, if the best prefix match covers more than ``cache_threshold`` of the prompt and that
   endpoint is not saturated (KV usage under ``kv_saturation`` and fewer than
   ``max_waiting`` requests queued in the engine), go there: a hot prefix spills over.
3. Else (a miss) go to the least-loaded endpoint -- never to the emptiest index, which piles
   every new prefix on one idle-looking engine (SGLang #14305/#14532).
"""

from __future__ import annotations

from collections.abc import Sequence

from sluice.routing.cache_aware import CacheAwarePolicy, least_loaded
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
    ) -> None:
        super().__init__(index, learn)
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.kv_saturation = kv_saturation
        self.max_waiting = max_waiting

    def _imbalanced(self, high: int, low: int) -> bool:
        return high - low > self.balance_abs and high > self.balance_rel * low

    def choose(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision:
        view = self.view(facts, candidates)
        scores = {c.id: round(view.fraction(c.id), 3) for c in candidates}
        calm = least_loaded(candidates)
        low = calm.load()
        high = max(c.load() for c in candidates)
        if self._imbalanced(high, low):
            return self.decision(calm, view, f"imbalanced (load {high} vs {low})", scores)
        best = max(candidates, key=lambda c: (view.depths.get(c.id, 0), -c.load(), -c.kv_usage))
        ratio = view.fraction(best.id)
        if ratio <= self.cache_threshold:
            return self.decision(calm, view, f"miss (best match {ratio:.2f}): least load", scores)
        if best.kv_usage >= self.kv_saturation or best.waiting >= self.max_waiting:
            reason = f"match {ratio:.2f} on saturated {best.id}: least load"
            return self.decision(calm, view, reason, scores)
        return self.decision(best, view, f"prefix match {ratio:.2f}", scores)


register_policy(PrefixAffinity.name, PrefixAffinity)
