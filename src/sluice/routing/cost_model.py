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
  fleet-wide estimate, itself starting from ``prefill_rate``;
* plus ``kv_penalty`` seconds, scaled by how far the engine's KV usage is above ``kv_knee``:
  a request that hits the cache of a memory-full engine still waits there for running requests
  to finish and free blocks, a wait no prefill count shows;
* ``load_penalty`` seconds per outstanding request above the least-loaded candidate: when KV
  memory, not prefill, is the bottleneck, a request waits behind the requests holding memory.
  With ``load_penalty_low`` set, the penalty applies in full only to an engine whose memory is
  full and falls linearly to ``load_penalty_low`` at ``load_knee`` KV usage and below: an engine
  with free blocks starts every request it is sent, so a request count there says nothing of
  the wait, and the prefill queue alone should place a miss;
* ``miss_weight`` > 1 charges this request's own uncached tokens more than queued ones: a miss
  also costs later requests (it evicts other prompts' blocks and duplicates this one's), which a
  per-request TTFT does not see. 1 is the pure predicted TTFT.

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
        kv_penalty: float = 0.0,
        kv_knee: float = 0.8,
        miss_weight: float = 1.0,
        load_penalty: float = 0.0,
        free_queue: bool = False,
        load_penalty_low: float | None = None,
        load_knee: float = 0.6,
    ) -> None:
        super().__init__(index, learn, free_queue=free_queue)
        if not 0 <= load_knee < 1:
            raise ValueError("load_knee must be in [0, 1)")
        if prefill_rate <= 0 or not 0 < learning_rate <= 1:
            raise ValueError("prefill_rate must be > 0 and learning_rate in (0, 1]")
        self.prior_spt = 1.0 / prefill_rate
        self.overhead = overhead
        self.decode_weight = decode_weight
        self.learning_rate = learning_rate
        self.kv_penalty = kv_penalty
        self.kv_knee = kv_knee
        self.miss_weight = miss_weight
        self.load_penalty = load_penalty
        self.load_penalty_low = load_penalty_low
        self.load_knee = load_knee
        self.fleet_spt = self.prior_spt
        self.spt: dict[str, float] = {}
        self.samples = 0
        self._offered: dict[int | str, dict[str, tuple[float, float, float]]] = {}
        self._pending: OrderedDict[int | str, tuple[str, float, float]] = OrderedDict()

    def seconds_per_token(self, endpoint_id: str) -> float:
        return self.spt.get(endpoint_id, self.fleet_spt)

    def _terms(self, c: EndpointState, view: CacheView) -> tuple[float, float, float]:
        slowdown = 1.0 + self.decode_weight * max(c.in_flight, c.running)
        return float(c.in_flight_prefill_tokens), float(view.uncached_tokens(c.id)), slowdown

    def predict(self, c: EndpointState, view: CacheView, min_load: int = 0) -> float:
        return self._predict(c, self._terms(c, view), min_load)

    def _predict(self, c: EndpointState, terms: tuple[float, float, float], min_load: int) -> float:
        queued, uncached, slowdown = terms
        work = queued + self.miss_weight * uncached
        predicted = self.overhead + work * self.seconds_per_token(c.id) * slowdown
        if c.kv_usage > self.kv_knee:
            predicted += self.kv_penalty * (c.kv_usage - self.kv_knee) / (1.0 - self.kv_knee)
        return predicted + self.penalty_per_request(c) * (c.load() - min_load)

    def penalty_per_request(self, c: EndpointState) -> float:
        """``load_penalty``, ramped down to ``load_penalty_low`` as ``c``'s memory frees up."""
        low = self.load_penalty_low
        if low is None:
            return self.load_penalty
        ramp = min(1.0, max(0.0, (c.kv_usage - self.load_knee) / (1.0 - self.load_knee)))
        return low + (self.load_penalty - low) * ramp

    def choose(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision:
        return self.cheapest(facts, candidates, self.view(facts, candidates))

    def cheapest(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], view: CacheView
    ) -> Decision:
        """The candidate with the lowest predicted TTFT (ties: least loaded)."""
        min_load = min(c.load() for c in candidates)
        # Each candidate's terms once, for the prediction and for learning (``remember``).
        terms = {c.id: self._terms(c, view) for c in candidates}
        predicted = {c.id: self._predict(c, terms[c.id], min_load) for c in candidates}
        best = min(predicted.values())
        chosen = least_loaded([c for c in candidates if predicted[c.id] <= best * (1 + 1e-9)])
        self._keep_offered(facts, terms)
        cached = view.cached_tokens(chosen.id)
        reason = f"min predicted ttft {best * 1000:.1f}ms (cached {cached}/{facts.prompt_tokens})"
        scores = {k: round(v * 1000, 2) for k, v in predicted.items()}  # milliseconds
        return self.decision(chosen, view, reason, scores)

    def remember(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], view: CacheView
    ) -> None:
        """Keep each candidate's predicted work, to learn from the TTFT of the one dispatched."""
        self._keep_offered(facts, {c.id: self._terms(c, view) for c in candidates})

    def _keep_offered(
        self, facts: RequestFacts, terms: dict[str, tuple[float, float, float]]
    ) -> None:
        self._offered[_key(facts)] = terms
        if len(self._offered) > _MAX_PENDING:
            self._offered.pop(next(iter(self._offered)))

    def on_dispatch(self, facts: RequestFacts, endpoint: EndpointState, now: float) -> None:
        super().on_dispatch(facts, endpoint, now)
        key = _key(facts)
        offered = self._offered.pop(key, None)
        if offered is None or endpoint.id not in offered:
            return
        queued, uncached, slowdown = offered[endpoint.id]
        self._pending[key] = (endpoint.id, queued + uncached, slowdown)
        if len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)

    def on_complete(
        self,
        facts: RequestFacts,
        endpoint: EndpointState,
        now: float,
        ttft: float | None,
        ok: bool,
        output_tokens: int = 0,
    ) -> None:
        super().on_complete(facts, endpoint, now, ttft, ok, output_tokens=output_tokens)
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


class AffinityCost(CostModel):
    """Prefix affinity first, the cost model for everything else.

    A request whose best match covers more than ``cache_threshold`` of its prompt goes to that
    endpoint unless it is saturated -- sticking to a conversation's cache keeps it warm for its
    next turns, a benefit the per-request TTFT does not count. Saturated means ``max_waiting``
    requests queued in the engine, or too few free KV blocks for this request's uncached part
    (at ``kv_saturation`` usage) while another candidate has them: a hit on a memory-full
    engine needs only the blocks it does not share, and when every engine is full, waiting at
    home beats waiting elsewhere and recomputing (leaving engines at high usage alone cost hit
    rate and TTFT p99 on the Mooncake trace, bench/results/routing.md). Every other request (a
    miss, a saturated home, an imbalanced fleet) goes where its predicted TTFT is lowest, which
    sees what request counts do not: a huge prefill in progress, a queue of long prompts.
    """

    name = "affinity_cost"

    def __init__(
        self,
        index: PrefixIndex | None = None,
        learn: bool = True,
        cache_threshold: float = 0.3,
        kv_saturation: float = 0.99,
        max_waiting: int = 32,
        balance_abs: int = 64,
        balance_rel: float = 1.5,
        load_penalty: float = 0.5,
        free_queue: bool = True,
        load_penalty_low: float | None = 0.1,
        **cost_options: float,
    ) -> None:
        # load_penalty 0.5 s per outstanding request: the setting the quality benchmark ran
        # (bench/results/routing.md); misses then also respect memory-bound queues.
        # free_queue: the index models the engines' free queues (approximate mode); it beat the
        # plain LRU on every benchmark window (routing.md, session 5). Precise mode passes False.
        # load_penalty_low 0.1 s below 60% KV usage: misses on engines with free memory are
        # placed by their prefill queue (multi-turn chat's first turns; routing.md, session 6).
        super().__init__(
            index,
            learn,
            load_penalty=load_penalty,
            free_queue=free_queue,
            load_penalty_low=load_penalty_low,
            **cost_options,
        )
        self.cache_threshold = cache_threshold
        self.kv_saturation = kv_saturation
        self.max_waiting = max_waiting
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel

    def choose(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision:
        view = self.view(facts, candidates)
        if not view.depths:
            return self.cheapest(facts, candidates, view)
        loads = [c.load() for c in candidates]
        low, high = min(loads), max(loads)
        if high - low > self.balance_abs and high > self.balance_rel * low:
            return self.cheapest(facts, candidates, view)
        home = max(candidates, key=lambda c: (view.depths.get(c.id, 0), -c.load()))
        ratio = view.fraction(home.id)
        if (
            ratio <= self.cache_threshold
            or home.waiting >= self.max_waiting
            or self._memory_bound(home, candidates, view)
        ):
            return self.cheapest(facts, candidates, view)
        self.remember(facts, candidates, view)
        scores = {c.id: round(view.fraction(c.id), 3) for c in candidates}
        return self.decision(home, view, f"prefix match {ratio:.2f}", scores)

    def _memory_bound(
        self, home: EndpointState, candidates: Sequence[EndpointState], view: CacheView
    ) -> bool:
        """The home cannot take this request's uncached part, and another candidate could:
        when every engine is full, waiting at home beats waiting and recomputing elsewhere."""
        if not self._no_room(home, view):
            return False
        return any(c is not home and not self._no_room(c, view) for c in candidates)

    def _no_room(self, c: EndpointState, view: CacheView) -> bool:
        if c.kv_usage < self.kv_saturation:
            return False
        if not c.num_blocks:  # capacity unknown: usage alone decides
            return True
        free_tokens = (1.0 - c.kv_usage) * c.num_blocks * c.block_size
        return view.uncached_tokens(c.id) > free_tokens


def _key(facts: RequestFacts) -> int | str:
    # The caller passes the same facts object from pick to complete; the request id when set.
    return facts.request_id or id(facts)


register_policy(CostModel.name, CostModel)
register_policy(AffinityCost.name, AffinityCost)
