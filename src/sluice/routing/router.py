"""The routing stage: version -> model/LoRA candidates -> pool -> session affinity -> policy.

One pure object the gateway and the cluster simulator both call with the whole fleet's states:

1. ``versions`` turns the served name into a version (canary weights, header pin);
2. candidates are the available endpoints serving it; for a LoRA request only those holding the
   adapter, else those with a free adapter slot (the decision then asks to load it);
3. ``pools`` keeps the pool of the request's (model, adapter, prompt class), spilling or waiting
   when it is full;
4. a live, not-full session binding wins; otherwise the policy picks.
"""

from __future__ import annotations

from collections.abc import Sequence

from sluice.routing.affinity import SessionAffinity
from sluice.routing.endpoint import EndpointState
from sluice.routing.facts import RequestFacts
from sluice.routing.lora import lora_candidates
from sluice.routing.policy import Decision, NoEndpointError, Policy
from sluice.routing.pools import FullWhen, PoolMap
from sluice.routing.versions import VersionMap


class Router:
    def __init__(
        self,
        policy: Policy,
        *,
        pools: PoolMap | None = None,
        versions: VersionMap | None = None,
        affinity: SessionAffinity | None = None,
    ) -> None:
        self.policy = policy
        self.pools = pools or PoolMap()
        self.versions = versions or VersionMap()
        self.affinity = affinity
        # A session leaves its endpoint once that endpoint is full, like any other request.
        self.affinity_full_when: FullWhen = self.pools.full_when

    def route(self, facts: RequestFacts, states: Sequence[EndpointState], now: float) -> Decision:
        version = self.versions.resolve(facts)
        model = version.model
        candidates = [s for s in states if s.available(now) and s.endpoint.serves(model)]
        if not candidates:
            raise NoEndpointError(f"no available endpoint serves model {model!r}")
        load_adapter = None
        if facts.adapter:
            lora = lora_candidates(facts.adapter, candidates)
            if not lora.candidates:
                raise NoEndpointError(
                    f"no endpoint of {model!r} has adapter {facts.adapter!r} or a free slot"
                )
            candidates, load_adapter = lora.candidates, lora.load_adapter
        choice = self.pools.select(facts, model, candidates)
        decision = self._sticky(facts, choice.candidates, now)
        if decision is None:
            decision = self.policy.pick(facts, choice.candidates, now)
        if self.affinity is not None and facts.session_key:
            self.affinity.bind(facts.session_key, decision.endpoint.id, now)
        upstream = facts.adapter or model
        decision.upstream_model = upstream if upstream != facts.model else None
        decision.load_adapter = load_adapter
        decision.pool = choice.pool
        notes = [version.reason, choice.note]
        if choice.pool is not None:
            notes.append(f"class {choice.prompt_class}")
        decision.reason = "; ".join([n for n in notes if n] + [decision.reason])
        return decision

    def _sticky(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision | None:
        if self.affinity is None or not facts.session_key:
            return None
        endpoint_id = self.affinity.lookup(facts.session_key, now)
        if endpoint_id is None:
            return None
        for c in candidates:
            if c.id == endpoint_id:
                if self.affinity_full_when.full(c):
                    return None
                return Decision(c, "session affinity", prefill_tokens=facts.prompt_tokens)
        return None
