"""What one admission reserves: rate buckets (requests, tokens) and concurrency slots."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"
    CONCURRENCY = "concurrency"


@dataclass(frozen=True, slots=True)
class RateBucket:
    """``limit`` units per ``period`` seconds under ``name`` (e.g. ``user:t1/alice:requests``)."""

    name: str
    kind: Kind
    limit: int
    period: float
    cost: int


@dataclass(frozen=True, slots=True)
class SlotBucket:
    """At most ``limit`` concurrent holders of ``name``."""

    name: str
    limit: int


@dataclass(frozen=True, slots=True)
class Plan:
    rates: tuple[RateBucket, ...] = ()
    slots: tuple[SlotBucket, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.rates and not self.slots


@dataclass(frozen=True, slots=True)
class BucketState:
    """What one bucket looked like after a reservation attempt (for headers)."""

    name: str
    kind: Kind
    limit: int
    remaining: int
    reset_after: float


@dataclass(slots=True)
class Verdict:
    allowed: bool
    retry_after: float = 0.0
    states: list[BucketState] = field(default_factory=list)
    refused_by: str | None = None  # name of the first bucket that refused
    unavailable: bool = False  # the shared backend could not be reached (fail-closed)
    backend: str = "memory"

    def tightest(self, kind: Kind) -> BucketState | None:
        """The bucket of ``kind`` with the least remaining (what OpenAI-style headers report)."""
        chosen: BucketState | None = None
        for s in self.states:
            if s.kind is kind and (chosen is None or s.remaining < chosen.remaining):
                chosen = s
        return chosen
