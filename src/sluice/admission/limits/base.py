"""The limiter seam: reserve every bucket of a plan atomically, settle once."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sluice.admission.limits.buckets import Kind, Plan, RateBucket, Verdict


class Limiter(ABC):
    """A backend that checks and reserves all buckets of a plan in one atomic step.

    ``reserve`` either reserves everything (``Verdict.allowed``) or nothing. ``settle`` is called
    exactly once per allowed reservation with the real token count (prompt + generated, also on
    cancellation): unused token estimates are given back and concurrency slots released. Slots that
    are never released expire after ``slot_ttl`` seconds.
    """

    name = "base"

    @abstractmethod
    async def reserve(self, plan: Plan, ticket_id: str, slot_ttl: float) -> Verdict: ...

    @abstractmethod
    async def settle(
        self, plan: Plan, ticket_id: str, actual_tokens: int | None, served: bool = True
    ) -> None:
        """Give back unused token estimates, free slots; ``served=False`` (the request never
        reached an engine: queue refusal, unknown model) also gives the request back."""

    async def close(self) -> None:
        """Release connections (nothing to do for in-process backends)."""


def refund(bucket: RateBucket, actual_tokens: int | None, served: bool) -> int:
    """Units to give back to a rate bucket at settle (negative: charge more)."""
    if bucket.kind is Kind.REQUESTS:
        return 0 if served else bucket.cost
    if not served:
        return bucket.cost
    if actual_tokens is None:
        return 0
    return bucket.cost - max(0, actual_tokens)
