"""Shared limiter with an explicit policy for when Redis cannot be reached.

``open``: fall back to in-process limits (each replica enforces the limits on its own share of
traffic) until Redis answers again. ``closed``: refuse with ``Verdict.unavailable``. Either way a
metric counts the failures and a log line says what happened (once per outage, plus recovery).
After a failure, Redis is not retried for ``retry_interval`` seconds so an outage costs nothing on
the request path; recovery needs no restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluice.admission.limits.base import Limiter
from sluice.admission.limits.buckets import Plan, Verdict
from sluice.admission.limits.memory import MemoryLimiter
from sluice.admission.metrics import LIMITER_BACKEND_ERRORS, LIMITER_DEGRADED

log = structlog.get_logger("sluice.admission.limits")

FailMode = Literal["open", "closed"]
_ERRORS = (RedisConnectionError, RedisTimeoutError, RedisError, OSError)


class FailoverLimiter(Limiter):
    name = "redis"

    def __init__(
        self,
        primary: Limiter,
        mode: FailMode = "open",
        fallback: MemoryLimiter | None = None,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.mode: FailMode = mode
        self.fallback = fallback or MemoryLimiter(clock)
        self._retry_interval = retry_interval
        self._clock = clock
        self._down_until = 0.0
        self._degraded = False

    @property
    def degraded(self) -> bool:
        return self._degraded

    async def reserve(self, plan: Plan, ticket_id: str, slot_ttl: float) -> Verdict:
        if self._clock() >= self._down_until:
            try:
                verdict = await self.primary.reserve(plan, ticket_id, slot_ttl)
            except _ERRORS as exc:
                self._failed(exc)
            else:
                self._recovered()
                return verdict
        LIMITER_BACKEND_ERRORS.labels(self.mode).inc()
        if self.mode == "open":
            return self.fallback.reserve_now(plan, ticket_id, slot_ttl)
        return Verdict(
            allowed=False,
            retry_after=self._retry_interval,
            unavailable=True,
            backend=self.primary.name,
        )

    async def settle(
        self, plan: Plan, ticket_id: str, actual_tokens: int | None, served: bool = True
    ) -> None:
        await self.settle_on(self.primary.name, plan, ticket_id, actual_tokens, served)

    async def settle_on(
        self,
        backend: str,
        plan: Plan,
        ticket_id: str,
        actual_tokens: int | None,
        served: bool = True,
    ) -> None:
        """Settle where the reservation was made (``Verdict.backend``)."""
        if backend == self.fallback.name:
            self.fallback.settle_now(plan, ticket_id, actual_tokens, served)
            return
        try:
            await self.primary.settle(plan, ticket_id, actual_tokens, served)
        except _ERRORS as exc:
            # The reservation stays until its slots and buckets expire on their own.
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self._down_until = self._clock() + self._retry_interval
        if not self._degraded:
            self._degraded = True
            LIMITER_DEGRADED.set(1)
            log.warning(
                "shared limiter unreachable",
                error=type(exc).__name__,
                detail=str(exc)[:200],
                behaviour="fail-open on local limits" if self.mode == "open" else "fail-closed",
            )

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            LIMITER_DEGRADED.set(0)
            log.warning("shared limiter reachable again", behaviour="shared limits")

    async def close(self) -> None:
        await self.primary.close()
