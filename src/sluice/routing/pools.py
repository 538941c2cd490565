"""Prompt classes and pools: which group of endpoints may serve a request, and what if it is full.

A prompt class names a kind of request by its prompt size and kind (interactive or batch), e.g.
``chat`` below 2,048 tokens and ``long`` above. A pool rule maps (model, adapter, class) to a pool
(``Endpoint.pool``); the first matching rule wins. When every endpoint of the chosen pool is full
the rule says what to do: ``spill`` to the listed pools in order, or ``wait`` (the caller holds
the request and retries; see ``PoolFullError.retry_after``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sluice.routing.endpoint import EndpointState
from sluice.routing.facts import RequestFacts
from sluice.routing.policy import NoEndpointError

ANY = "*"


class PoolFullError(NoEndpointError):
    """Every endpoint of the request's pool is full and its rule says to wait."""

    def __init__(self, pool: str, retry_after: float) -> None:
        super().__init__(f"pool {pool!r} is full")
        self.pool = pool
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class PromptClass:
    name: str
    min_tokens: int = 0
    max_tokens: int | None = None  # exclusive upper bound; None: no bound
    kind: str | None = None  # "interactive", "batch", or None for either

    def matches(self, facts: RequestFacts) -> bool:
        if facts.prompt_tokens < self.min_tokens:
            return False
        if self.max_tokens is not None and facts.prompt_tokens >= self.max_tokens:
            return False
        return self.kind is None or self.kind == facts.kind


@dataclass(frozen=True, slots=True)
class PoolRule:
    pool: str
    model: str = ANY
    adapter: str = ANY  # "*" any, "" only requests without an adapter, else that adapter
    prompt_class: str = ANY
    when_full: str = "spill"  # "spill" or "wait"
    spill_to: tuple[str, ...] = ()

    def matches(self, model: str, adapter: str | None, prompt_class: str) -> bool:
        if self.model not in (ANY, model):
            return False
        if self.adapter != ANY and self.adapter != (adapter or ""):
            return False
        return self.prompt_class in (ANY, prompt_class)


@dataclass(frozen=True, slots=True)
class FullWhen:
    """An endpoint is full when any limit is reached (0 disables a limit)."""

    max_in_flight: int = 0
    max_waiting: int = 10
    kv_usage: float = 0.95

    def full(self, s: EndpointState) -> bool:
        return (
            (self.max_in_flight > 0 and s.in_flight >= self.max_in_flight)
            or (self.max_waiting > 0 and s.waiting >= self.max_waiting)
            or s.kv_usage >= self.kv_usage
        )


@dataclass(frozen=True, slots=True)
class PoolChoice:
    pool: str | None  # None: no rule applied, every endpoint of the model is a candidate
    prompt_class: str
    candidates: list[EndpointState]
    note: str = ""


class PoolMap:
    def __init__(
        self,
        classes: Sequence[PromptClass] = (),
        rules: Sequence[PoolRule] = (),
        full_when: FullWhen | None = None,
        wait_retry_after: float = 0.5,
    ) -> None:
        self.classes = list(classes)
        self.rules = list(rules)
        self.full_when = full_when or FullWhen()
        self.wait_retry_after = wait_retry_after
        for rule in self.rules:
            if rule.when_full not in ("spill", "wait"):
                raise ValueError(f"pool {rule.pool!r}: when_full must be 'spill' or 'wait'")

    def classify(self, facts: RequestFacts) -> str:
        for c in self.classes:
            if c.matches(facts):
                return c.name
        return "default"

    def select(
        self, facts: RequestFacts, model: str, candidates: Sequence[EndpointState]
    ) -> PoolChoice:
        """Restrict ``candidates`` (already serving ``model``, available) to the right pool."""
        prompt_class = self.classify(facts)
        rule = next((r for r in self.rules if r.matches(model, facts.adapter, prompt_class)), None)
        if rule is None:
            return PoolChoice(None, prompt_class, list(candidates))
        home = [c for c in candidates if c.endpoint.pool == rule.pool]
        if any(not self.full_when.full(c) for c in home):
            return PoolChoice(rule.pool, prompt_class, home)
        if rule.when_full == "wait":
            raise PoolFullError(rule.pool, self.wait_retry_after)
        for other in rule.spill_to:
            members = [c for c in candidates if c.endpoint.pool == other]
            if any(not self.full_when.full(c) for c in members):
                return PoolChoice(other, prompt_class, members, f"spilled from {rule.pool}")
        # Everything is full: stay home (queueing there beats failing); the policy balances.
        if home:
            return PoolChoice(rule.pool, prompt_class, home, "pool full, nowhere to spill")
        raise NoEndpointError(f"pool {rule.pool!r} has no available endpoint for {model!r}")
