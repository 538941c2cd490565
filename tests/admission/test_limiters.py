"""Both limiter backends (in-process and real Redis) against the same scenarios."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from sluice.admission.headers import rate_limit_headers
from sluice.admission.limits import (
    Kind,
    Limiter,
    MemoryLimiter,
    Plan,
    RateBucket,
    RedisLimiter,
    SlotBucket,
)
from sluice.admission.limits.resp import RespClient
from tests.admission.services import REDIS_URL, FakeClock


@pytest.fixture(params=["memory", "redis", "redis-lean"])
async def limiter(
    request: pytest.FixtureRequest, clock: FakeClock, redis_client: Redis, redis_prefix: str
) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter(clock)
    elif request.param == "redis":
        yield RedisLimiter(redis_client, redis_prefix)
    else:  # the gateway's client for plain redis:// URLs
        lean = RespClient.from_url(REDIS_URL)
        assert lean is not None
        yield RedisLimiter(redis_client, redis_prefix, lean)
        await lean.close()


def req(name: str, limit: int) -> RateBucket:
    return RateBucket(f"{name}:requests", Kind.REQUESTS, limit, 60.0, 1)


def tok(name: str, limit: int, cost: int) -> RateBucket:
    return RateBucket(f"{name}:tokens", Kind.TOKENS, limit, 60.0, cost)


async def test_request_limit_admits_exactly_the_limit(limiter: Limiter) -> None:
    plan = Plan(rates=(req("user:a", 5),))
    results = [await limiter.reserve(plan, f"t{i}", 60) for i in range(8)]
    assert [r.allowed for r in results] == [True] * 5 + [False] * 3
    refused = results[-1]
    assert refused.refused_by == "user:a:requests"
    assert 11.0 < refused.retry_after <= 12.0 + 1e-3  # one slot back every 12 s
    state = refused.tightest(Kind.REQUESTS)
    assert state is not None and state.limit == 5 and state.remaining == 0


async def test_refusal_by_one_bucket_reserves_nothing_anywhere(limiter: Limiter) -> None:
    tight = Plan(rates=(req("key:k", 100), req("user:u", 1)))
    assert (await limiter.reserve(tight, "a", 60)).allowed
    for i in range(5):
        assert not (await limiter.reserve(tight, f"b{i}", 60)).allowed
    # The key bucket was charged once only: 99 left.
    only_key = await limiter.reserve(Plan(rates=(req("key:k", 100),)), "c", 60)
    state = only_key.tightest(Kind.REQUESTS)
    assert state is not None and state.remaining == 98


async def test_token_estimate_is_reserved_then_settled_to_the_real_count(
    limiter: Limiter,
) -> None:
    def plan(cost: int) -> Plan:
        return Plan(rates=(tok("tenant:t", 1000, cost),))

    assert (await limiter.reserve(plan(600), "a", 60)).allowed
    assert not (await limiter.reserve(plan(600), "b", 60)).allowed
    await limiter.settle(plan(600), "a", actual_tokens=100)  # 500 given back
    assert (await limiter.reserve(plan(800), "c", 60)).allowed
    assert not (await limiter.reserve(plan(200), "d", 60)).allowed


async def test_oversized_estimate_passes_on_a_full_bucket_only(limiter: Limiter) -> None:
    big = Plan(rates=(tok("model:m", 1000, 5000),))
    assert (await limiter.reserve(big, "a", 60)).allowed
    assert not (await limiter.reserve(Plan(rates=(tok("model:m", 1000, 1),)), "b", 60)).allowed


async def test_concurrency_slot_released_at_settle(limiter: Limiter) -> None:
    plan = Plan(slots=(SlotBucket("key:k:concurrency", 2),))
    assert (await limiter.reserve(plan, "a", 60)).allowed
    assert (await limiter.reserve(plan, "b", 60)).allowed
    refused = await limiter.reserve(plan, "c", 60)
    assert not refused.allowed and refused.refused_by == "key:k:concurrency"
    await limiter.settle(plan, "a", None)
    assert (await limiter.reserve(plan, "c", 60)).allowed


async def test_concurrency_slots_expire_if_never_released(
    limiter: Limiter, clock: FakeClock
) -> None:
    plan = Plan(slots=(SlotBucket("key:k:concurrency", 1),))
    assert (await limiter.reserve(plan, "lost", 0.2)).allowed
    assert not (await limiter.reserve(plan, "b", 0.2)).allowed
    clock.advance(0.3)
    if isinstance(limiter, RedisLimiter):
        await asyncio.sleep(0.3)  # Redis uses its own clock
    assert (await limiter.reserve(plan, "b", 0.2)).allowed


@pytest.mark.parametrize("lean", [False, True])
async def test_three_redis_clients_under_a_concurrent_burst_share_the_limits(
    redis_prefix: str, lean: bool
) -> None:
    clients = [Redis.from_url(REDIS_URL) for _ in range(3)]
    limiters = [
        RedisLimiter(c, redis_prefix, RespClient.from_url(REDIS_URL) if lean else None)
        for c in clients
    ]
    estimate = 70
    plan = Plan(rates=(req("global", 50), tok("global", 1000, estimate)))

    async def one(i: int) -> bool:
        return (await limiters[i % 3].reserve(plan, f"t{i}", 60)).allowed

    try:
        results = await asyncio.gather(*(one(i) for i in range(300)))
    finally:
        for c in clients:
            await c.aclose()
    admitted = sum(results)
    assert admitted <= 50
    assert admitted * estimate <= 1000 + estimate
    assert admitted == 1000 // estimate  # tokens are the tighter limit here


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=50),  # request limit
            st.integers(min_value=1, max_value=500),  # token cost
            st.floats(min_value=0.0, max_value=5.0),  # seconds since the previous request
        ),
        min_size=1,
        max_size=60,
    )
)
def test_in_process_fast_path_decides_like_the_full_gcra_evaluation(
    steps: list[tuple[int, int, float]],
) -> None:
    """The inlined arithmetic of ``reserve_now`` against ``gcra.check`` on every bucket."""
    fast_clock, full_clock = FakeClock(), FakeClock()
    fast, full = MemoryLimiter(fast_clock), MemoryLimiter(full_clock)
    for i, (rpm, cost, gap) in enumerate(steps):
        fast_clock.advance(gap)
        full_clock.advance(gap)
        plan = Plan((req("k", rpm), tok("k", 300, cost), req("global", 40)), (SlotBucket("c", 3),))
        got = fast.reserve_now(plan, f"t{i}", 600.0)
        want = full._reserve_all(plan, f"t{i}", 600.0, full_clock())
        assert got.allowed == want.allowed and got.refused_by == want.refused_by
        for kind in (Kind.REQUESTS, Kind.TOKENS):
            a, b = got.tightest(kind), want.tightest(kind)
            assert a is not None and b is not None
            assert (a.remaining, a.limit) == (b.remaining, b.limit)
            assert a.reset_after == pytest.approx(b.reset_after)
        if got.allowed and i % 2:
            fast.settle_now(plan, f"t{i}", cost // 2)
            full.settle_now(plan, f"t{i}", cost // 2)


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=50),  # request limit
            st.integers(min_value=1, max_value=500),  # token cost
            st.floats(min_value=0.0, max_value=5.0),  # seconds since the previous request
        ),
        min_size=1,
        max_size=60,
    )
)
def test_the_header_only_fast_path_reserves_and_answers_like_reserve_now(
    steps: list[tuple[int, int, float]],
) -> None:
    """``reserve_headers`` (the gateway's common case) gives the headers of ``reserve_now``'s
    verdict, reserves the same, and reserves nothing when it declines."""
    fast_clock, full_clock = FakeClock(), FakeClock()
    fast, full = MemoryLimiter(fast_clock), MemoryLimiter(full_clock)
    for i, (rpm, cost, gap) in enumerate(steps):
        fast_clock.advance(gap)
        full_clock.advance(gap)
        plan = Plan((req("k", rpm), tok("k", 300, cost), req("global", 40)), (SlotBucket("c", 3),))
        want = full.reserve_now(plan, f"t{i}", 600.0)
        got = fast.reserve_headers(plan, f"t{i}", 600.0)
        if got is None:
            assert not want.allowed
            assert not fast.reserve_now(plan, f"t{i}", 600.0).allowed  # nothing was taken
        else:
            assert want.allowed and got == rate_limit_headers(want)
        assert fast._tat == full._tat and fast._slots == full._slots
