"""The policy seam: pick one endpoint among candidates, explain why, learn from outcomes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice.routing.endpoint import EndpointState
from sluice.routing.facts import RequestFacts


class NoEndpointError(Exception):
    """No candidate can serve the request (all unhealthy, ejected, or filtered out)."""


@dataclass(slots=True)
class Decision:
    endpoint: EndpointState
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
    # Prompt tokens the chosen engine is expected to find in its prefix cache, and the rest it
    # must prefill. Callers pass ``prefill_tokens`` (when set) to ``EndpointState.begin`` so the
    # queued-prefill accounting counts uncached work only.
    cached_tokens: int = 0
    prefill_tokens: int | None = None
    # Set by the router stage in front of the policy (``routing.router``).
    upstream_model: str | None = None  # the model name to send (a version may rename it)
    load_adapter: str | None = None  # ask the endpoint to load this LoRA adapter first
    pool: str | None = None

    def explain(self) -> str:
        """Compact form for a debug header and the audit row."""
        ranked = ", ".join(f"{k}={v:.3g}" for k, v in self.scores.items())
        extra = "".join(
            f"; {name}={value}"
            for name, value in (
                ("pool", self.pool),
                ("model", self.upstream_model),
                ("cached", self.cached_tokens or None),
                ("load_adapter", self.load_adapter),
            )
            if value is not None
        )
        return f"{self.endpoint.id}; {self.reason}" + (f"; {ranked}" if ranked else "") + extra


class Policy(ABC):
    """Base class. Subclasses implement ``choose``; ``pick`` filters unavailable endpoints.

    ``candidates`` are already restricted to endpoints that serve the model (the pool stage);
    policies must not mutate load counters, which the caller owns (``EndpointState.begin/end``).
    """

    name = "base"

    def pick(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision:
        alive = [c for c in candidates if c.available(now)]
        if not alive:
            raise NoEndpointError(f"no available endpoint for model {facts.model!r}")
        return self.choose(facts, alive, now)

    @abstractmethod
    def choose(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision:
        """Pick among available candidates (never empty)."""

    def on_dispatch(self, facts: RequestFacts, endpoint: EndpointState, now: float) -> None:
        """The request was sent to ``endpoint`` (after any retry). Learning policies override."""

    def on_complete(
        self,
        facts: RequestFacts,
        endpoint: EndpointState,
        now: float,
        ttft: float | None,
        ok: bool,
        output_tokens: int = 0,
    ) -> None:
        """The request finished (successfully or not) after generating ``output_tokens``.
        Learning policies override."""

    def on_scrape(self, endpoint: EndpointState) -> None:
        """``endpoint``'s engine metrics were just refreshed (off the request path). Policies
        that keep a model of the engines override."""


class RoundRobin(Policy):
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision:
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return Decision(chosen, "round-robin")


class LeastLoad(Policy):
    """Fewest outstanding requests: gateway in-flight plus engine-reported waiting."""

    name = "least_load"

    def choose(
        self, facts: RequestFacts, candidates: Sequence[EndpointState], now: float
    ) -> Decision:
        chosen = min(candidates, key=lambda c: (c.load(), c.running, c.kv_usage))
        return Decision(chosen, "least load", {c.id: float(c.load()) for c in candidates})


_REGISTRY: dict[str, Callable[..., Policy]] = {
    RoundRobin.name: RoundRobin,
    LeastLoad.name: LeastLoad,
}


def register_policy(name: str, factory: Callable[..., Policy]) -> None:
    _REGISTRY[name] = factory


def make_policy(name: str, **options: Any) -> Policy:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown routing policy {name!r}; known: {known}") from None
    return factory(**options)


def policy_names() -> list[str]:
    return sorted(_REGISTRY)
