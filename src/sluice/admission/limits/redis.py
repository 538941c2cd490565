"""Shared limiter on Redis: one Lua call reserves every bucket, one settles.

Keys share one hash tag so a plan's keys live in one cluster slot. Clock: Redis ``TIME``.
With a ``RespClient`` (``resp.py``) the two script calls go through it instead of redis-py's
client (same scripts, keys and arguments; a fraction of the CPU per call).
"""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis

from sluice.admission.limits.base import Limiter, refund
from sluice.admission.limits.buckets import BucketState, Kind, Plan, Verdict
from sluice.admission.limits.resp import RespClient

_US = 1_000_000


def _script(name: str) -> str:
    return resources.files("sluice.admission.limits").joinpath(name).read_text()


class RedisLimiter(Limiter):
    name = "redis"

    def __init__(
        self, client: Redis, prefix: str = "sluice:rl", lean: RespClient | None = None
    ) -> None:
        self._client = client
        self._lean = lean
        self._prefix = "{" + prefix + "}:"
        self._reserve = client.register_script(_script("reserve.lua"))
        self._settle = client.register_script(_script("settle.lua"))

    def key(self, bucket_name: str) -> str:
        return self._prefix + bucket_name

    async def reserve(self, plan: Plan, ticket_id: str, slot_ttl: float) -> Verdict:
        keys = [self.key(b.name) for b in plan.rates] + [self.key(s.name) for s in plan.slots]
        args: list[str | int] = [ticket_id, int(slot_ttl * _US), len(plan.rates)]
        for b in plan.rates:
            args += [b.limit, int(b.period * _US), b.cost]
        args += [s.limit for s in plan.slots]
        if self._lean is not None:
            raw = await self._lean.evalsha(self._reserve.sha, self._reserve.script, keys, args)
        else:
            raw = await self._reserve(keys=keys, args=args)
        values = [int(v) for v in raw]
        verdict = Verdict(allowed=values[0] == 1, retry_after=values[1] / _US, backend=self.name)
        pos = 2
        for b in plan.rates:
            remaining, reset_us = values[pos], values[pos + 1]
            pos += 2
            verdict.states.append(BucketState(b.name, b.kind, b.limit, remaining, reset_us / _US))
            if not verdict.allowed and verdict.refused_by is None and remaining < b.cost:
                verdict.refused_by = b.name
        for s in plan.slots:
            free = values[pos]
            pos += 1
            verdict.states.append(BucketState(s.name, Kind.CONCURRENCY, s.limit, free, 0.0))
            if not verdict.allowed and verdict.refused_by is None and free <= 0:
                verdict.refused_by = s.name
        return verdict

    async def settle(
        self, plan: Plan, ticket_id: str, actual_tokens: int | None, served: bool = True
    ) -> None:
        moved = [(b, refund(b, actual_tokens, served)) for b in plan.rates]
        moved = [(b, units) for b, units in moved if units]
        keys = [self.key(b.name) for b, _ in moved] + [self.key(s.name) for s in plan.slots]
        if not keys:
            return
        args: list[str | int] = [ticket_id, len(moved)]
        args += [-round(units * b.period * _US / b.limit) for b, units in moved]
        if self._lean is not None:
            await self._lean.evalsha(self._settle.sha, self._settle.script, keys, args)
        else:
            await self._settle(keys=keys, args=args)

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.close()
        await self._client.aclose()
