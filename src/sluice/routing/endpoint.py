"""Endpoints and what routing knows of their load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One engine server. Identity is ``id``; everything else is configuration."""

    id: str
    url: str
    models: frozenset[str] = frozenset()
    pool: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)

    def serves(self, model: str) -> bool:
        # An endpoint that declares no models accepts any (learned later from /v1/models).
        return not self.models or model in self.models


@dataclass(slots=True)
class EndpointState:
    """Load and health of one endpoint.

    Two sources feed it: the gateway's own accounting (``begin``/``end``, exact and immediate) and
    the engine's scraped metrics (``running``, ``waiting``, ``kv_usage``: authoritative but late).
    """

    endpoint: Endpoint
    # Our own accounting, updated on every dispatch and completion.
    in_flight: int = 0
    in_flight_prefill_tokens: int = 0
    # Scraped from the engine's /metrics (vLLM names).
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    block_size: int = 16
    num_blocks: int = 0
    loras: frozenset[str] = frozenset()
    max_loras: int = 0
    # Health: probes and passive outlier detection.
    healthy: bool = True
    ejected_until: float = 0.0
    consecutive_failures: int = 0
    # Observed latency, exponentially weighted (seconds); None until measured.
    ttft_ewma: float | None = None

    @property
    def id(self) -> str:
        return self.endpoint.id

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until

    def load(self) -> int:
        """Outstanding work as the gateway sees it: our in-flight plus the engine's queue."""
        return self.in_flight + self.waiting

    def begin(self, prefill_tokens: int) -> None:
        self.in_flight += 1
        self.in_flight_prefill_tokens += prefill_tokens

    def first_token(self, prefill_tokens: int) -> None:
        """The request's prefill is done: it no longer counts as queued prefill work."""
        self.in_flight_prefill_tokens = max(0, self.in_flight_prefill_tokens - prefill_tokens)

    def end(self, prefill_tokens: int, prefill_done: bool) -> None:
        """Always called once per ``begin``, whatever the outcome (success, error, cancel)."""
        self.in_flight = max(0, self.in_flight - 1)
        if not prefill_done:
            self.first_token(prefill_tokens)
