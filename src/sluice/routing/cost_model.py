"""Cost model: send each request where its predicted time to first token is lowest.

    predicted_ttft(e) = overhead
                      + (queued_prefill(e) + uncached(e)) * seconds_per_token(e)
                        * (1 + decode_weight * decoding(e))

* ``queued_prefill``: prompt tokens already sent to ``e`` that have not produced a first token
  (the gateway's own accounting, immediate; uncached tokens when callers pass
  ``Decision.prefill_tokens`` to ``begin``);
* ``uncached``: this request's prompt minus what ``e`` is predicted to hold in its prefix cache;
* ``decoding``: sequences running on ``e``; each decode step shares the engine's token budget
  and reads its KV, slowing prefill down a little;
* ``seconds_per_token``: the engine's prefill speed, learned online per endpoint from observed
  TTFTs (an exponentially weighted mean of ``(ttft - overhead) / work``), starting from the
  fleet-wide estimate, itself starting from ``prefill_rate``.

A hit is worth exactly the prefill it saves, and a hot prefix stops attracting traffic as soon
as the queue in front of it costs more than recomputing elsewhere: no threshold to tune.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from sluice.routing.cache_aware import CacheAwarePolicy, CacheView, least_loaded
from sluice.routing.endpoint import EndpointState
from sluice.routing.facts import RequestFacts
from sluice.routing.policy import Decision, register_policy
from sluice.routing.prefix_index import PrefixIndex

# Pending predictions kept for learning; a request that never completes must not leak memory.
_MAX_PENDING = 100_000


class CostModel(CacheAwarePolicy):
    name = "cost_model"

    def __init__(
        self,
        index: PrefixIndex | None = None,
        learn: bool = True,
        prefill_rate: float = 20_000.0,
        overhead: float = 0.015,
        decode_weight: float = 0.005,
        learning_rate: float = 0.1,
    ) -> None:
        super().__init__(index, learn)
        if prefill_rate <= 0 or not 0 < learning_rate <= 1:
            raise ValueError("prefill_rate must be > 0 and learning_rate in (0, 1]")
        self.prior_spt = 1.0 / prefill_rate
        self.overhead = overhead
        self.decode_weight = decode_weight
        self.learning_rate = learning_rate
        self.fleet_spt = self.prior_spt
        self.spt: dict[str, float] = {}
        self.samples = 0
        self._offered: dict[int | str, dict[str, tuple[float, float]]] = {}
        self._pending: OrderedDict[int | str, tuple[str, float, float]] = OrderedDict()

    def seconds_per_token(self, endpoint_id: str) -> float:
        return self.spt.get(endpoint_id, self.fleet_spt)

    def _terms(self, c: EndpointState, view: CacheView) -> tuple[float, float]:
        work = float(c.in_flight_prefill_tokens + view.uncached_tokens(c.id))
        slowdown = 1.0 + self.decode_weight * max(c.in_flight, c.running)
        return work, slowdown

    def predict(self, c: EndpointState, view: CacheView) -> float:
        work, slowdown = self._terms(c, view)
        return self.overhead + work * self.seconds_per_token(c.id) * slowdown

    def choose(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision:
        view = self.view(facts, candidates)
        predicted = {c.id: self.predict(c, view) for c in candidates}
        best = min(predicted.values())
        chosen = least_loaded([c for c in candidates if predicted[c.id] <= best * (1 + 1e-9)])
        self._offered[_key(facts)] = {c.id: self._terms(c, view) for c in candidates}
        if len(self._offered) > _MAX_PENDING:
            self._offered.pop(next(iter(self._offered)))
        cached = view.cached_tokens(chosen.id)
        reason = f"min predicted ttft {best * 1000:.1f}ms (cached {cached}/{facts.prompt_tokens})"
        scores = {k: round(v * 1000, 2) for k, v in predicted.items()}  # milliseconds
        return self.decision(chosen, view, reason, scores)

    def on_dispatch(self, facts: RequestFacts, endpoint: EndpointState, now: float) -> None:
        super().on_dispatch(facts, endpoint, now)
        key = _key(facts)
        offered = self._offered.pop(key, None)
        if offered is None or endpoint.id not in offered:
            return
        work, slowdown = offered[endpoint.id]
        self._pending[key] = (endpoint.id, work, slowdown)
        if len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)

    def on_complete(
        self,
        facts: RequestFacts,
        endpoint: EndpointState,
        now: float,
        ttft: float | None,
        ok: bool,
    ) -> None:
        pending = self._pending.pop(_key(facts), None)
        if pending is None or not ok or ttft is None:
            return
        endpoint_id, work, slowdown = pending
        if work <= 0:
            return
        sample = max(0.0, ttft - self.overhead) / (work * slowdown)
        # One freak TTFT (a GC pause, a preemption) must not swing the estimate by orders of
        # magnitude: clamp each sample around the prior.
        sample = min(max(sample, self.prior_spt / 50), self.prior_spt * 50)
        a = self.learning_rate
        self.fleet_spt += a * (sample - self.fleet_spt)
        current = self.spt.get(endpoint_id, self.fleet_spt)
        self.spt[endpoint_id] = current + a * (sample - current)
        self.samples += 1


def _key(facts: RequestFacts) -> int | str:
    # The caller passes the same facts object from pick to complete; the request id when set.
    return facts.request_id or id(facts)


register_policy(CostModel.name, CostModel)
