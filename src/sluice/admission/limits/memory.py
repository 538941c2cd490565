"""In-process limiter: one gateway replica. Same arithmetic as the Redis backend."""

from __future__ import annotations

import time
from collections.abc import Callable

from sluice.admission import headers
from sluice.admission.limits import gcra
from sluice.admission.limits.base import Limiter, refund
from sluice.admission.limits.buckets import BucketState, Kind, Plan, RateBucket, Verdict

_SWEEP_EVERY = 4096
_Tight = tuple[tuple[int, RateBucket, float] | None, tuple[int, RateBucket, float] | None]
_SLOT_RETRY = 1.0


class MemoryLimiter(Limiter):
    """Buckets live in dicts; idle buckets are swept so memory stays bounded by active callers."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._slots: dict[str, dict[str, float]] = {}  # bucket -> ticket -> expiry
        self._ops = 0

    async def reserve(self, plan: Plan, ticket_id: str, slot_ttl: float) -> Verdict:
        return self.reserve_now(plan, ticket_id, slot_ttl)

    def reserve_now(self, plan: Plan, ticket_id: str, slot_ttl: float) -> Verdict:
        """Every bucket or none. The common case (everything fits) is one pass of inlined GCRA
        arithmetic (``gcra.check``'s, without its result objects); ``states`` then holds only
        the tightest rate bucket of each kind (the least remaining, the first of equals), which
        is what the response headers show. A refusal is worked out in full by ``_reserve_all``
        (every bucket's state)."""
        now = self._clock()
        tight = self._fits(plan, ticket_id, slot_ttl, now)
        if tight is None:
            return self._reserve_all(plan, ticket_id, slot_ttl, now)
        requests, tokens = tight
        states = []
        if requests is not None:
            remaining, b, used = requests
            states.append(BucketState(b.name, Kind.REQUESTS, b.limit, remaining, used))
        if tokens is not None:
            remaining, b, used = tokens
            states.append(BucketState(b.name, Kind.TOKENS, b.limit, remaining, used))
        return Verdict(True, 0.0, states, None, False, self.name)

    def reserve_headers(
        self, plan: Plan, ticket_id: str, slot_ttl: float
    ) -> list[tuple[bytes, bytes]] | None:
        """``reserve_now`` for the common case, returning the response's rate-limit headers
        (``rate_limit_headers`` of its verdict) without building the verdict; None, with nothing
        reserved, when something does not fit (then call ``reserve_now`` for the refusal)."""
        tight = self._fits(plan, ticket_id, slot_ttl, self._clock())
        if tight is None:
            return None
        requests, tokens = tight
        out: list[tuple[bytes, bytes]] = []
        if requests is not None:
            remaining, b, used = requests
            headers.append_headers(out, Kind.REQUESTS, b.limit, remaining, used)
        if tokens is not None:
            remaining, b, used = tokens
            headers.append_headers(out, Kind.TOKENS, b.limit, remaining, used)
        return out

    def _fits(self, plan: Plan, ticket_id: str, slot_ttl: float, now: float) -> _Tight | None:
        """Reserve every bucket if everything fits (returning the tightest rate bucket of each
        kind); None, with nothing changed, otherwise."""
        self._ops += 1
        if not self._ops % _SWEEP_EVERY:
            self._sweep(now)
        tats = self._tat
        new_tats: list[float] = []
        # The tightest bucket of each kind so far: (remaining, bucket, seconds used).
        requests: tuple[int, RateBucket, float] | None = None
        tokens: tuple[int, RateBucket, float] | None = None
        eps = gcra.EPS
        for b in plan.rates:
            period = b.period
            interval = period / b.limit
            tat = tats.get(b.name, now)
            base = tat if tat > now else now
            used = base + b.cost * interval - now
            if used > period + eps and base > now:
                return None
            new_tats.append(used + now)
            left = int((period - used) / interval + eps)
            remaining = left if left > 0 else 0
            if b.kind is Kind.REQUESTS:
                if requests is None or remaining < requests[0]:
                    requests = (remaining, b, used)
            elif tokens is None or remaining < tokens[0]:
                tokens = (remaining, b, used)
        if plan.slots:
            for s in plan.slots:
                if len(self._live_slots(s.name, now)) >= s.limit:
                    return None
            for s in plan.slots:
                self._slots.setdefault(s.name, {})[ticket_id] = now + slot_ttl
        for b, new_tat in zip(plan.rates, new_tats, strict=True):
            tats[b.name] = new_tat
        return requests, tokens

    def _reserve_all(self, plan: Plan, ticket_id: str, slot_ttl: float, now: float) -> Verdict:
        verdict = Verdict(allowed=True, backend=self.name)
        new_tats: list[float] = []
        for b in plan.rates:
            out = gcra.check(self._tat.get(b.name, now), now, b.cost, b.limit, b.period)
            verdict.states.append(
                BucketState(b.name, b.kind, b.limit, out.remaining, out.reset_after)
            )
            new_tats.append(out.tat)
            if not out.allowed:
                self._refuse(verdict, b.name, out.retry_after)
        for s in plan.slots:
            holders = self._live_slots(s.name, now)
            free = s.limit - len(holders)
            verdict.states.append(BucketState(s.name, Kind.CONCURRENCY, s.limit, max(0, free), 0.0))
            if free <= 0:
                # Slots free when requests finish; their expiry is only a safety net.
                self._refuse(verdict, s.name, _SLOT_RETRY)
        if verdict.allowed:
            for b, tat in zip(plan.rates, new_tats, strict=True):
                self._tat[b.name] = tat
            for s in plan.slots:
                self._slots.setdefault(s.name, {})[ticket_id] = now + slot_ttl
        return verdict

    async def settle(
        self, plan: Plan, ticket_id: str, actual_tokens: int | None, served: bool = True
    ) -> None:
        self.settle_now(plan, ticket_id, actual_tokens, served)

    def settle_now(
        self, plan: Plan, ticket_id: str, actual_tokens: int | None, served: bool = True
    ) -> None:
        tats = self._tat
        for b in plan.rates:
            if b.kind is Kind.REQUESTS and served:
                continue  # a served request keeps its count (``refund`` is 0)
            units = refund(b, actual_tokens, served)
            if units and b.name in tats:
                tats[b.name] = gcra.refund(tats[b.name], units, b.limit, b.period)
        for s in plan.slots:
            holders = self._slots.get(s.name)
            if holders is not None:
                holders.pop(ticket_id, None)
                if not holders:
                    del self._slots[s.name]

    def _live_slots(self, name: str, now: float) -> dict[str, float]:
        holders = self._slots.get(name)
        if not holders:
            return {}
        # Holders are kept in insertion order and share one TTL, so the oldest expire first:
        # drop from the front until a live one (O(expired), not O(holders)).
        while holders:
            ticket, expiry = next(iter(holders.items()))
            if expiry > now:
                break
            del holders[ticket]
        return holders

    @staticmethod
    def _refuse(verdict: Verdict, name: str, retry_after: float) -> None:
        if verdict.allowed:
            verdict.refused_by = name
        verdict.allowed = False
        verdict.retry_after = max(verdict.retry_after, retry_after)

    def _sweep(self, now: float) -> None:
        for name in [n for n, tat in self._tat.items() if tat <= now]:
            del self._tat[name]
        for name in list(self._slots):
            if not self._live_slots(name, now):
                del self._slots[name]

    def size(self) -> int:
        """Number of live buckets (a gauge for boundedness)."""
        return len(self._tat) + len(self._slots)
