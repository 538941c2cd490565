"""Priority order, FIFO, aging, bounds, eviction and the maximum wait (pure queue + async gate)."""

from __future__ import annotations

import asyncio

import pytest

from sluice.admission import priority as prio
from sluice.admission.gate import QueueGate, QueueRejected
from sluice.admission.priority import Priority
from sluice.admission.priority_queue import PriorityQueue, QueueLimits, Refusal
from tests.admission.services import FakeClock

P = Priority


def _drain(q: PriorityQueue[str], now: float) -> list[str]:
    out = []
    while (w := q.pop(now)) is not None:
        out.append(w.item)
    return out


def test_priority_order_then_fifo_within_a_priority() -> None:
    q: PriorityQueue[str] = PriorityQueue(QueueLimits(aging_s=1000))
    for item, p in [
        ("l1", P.LOW),
        ("h1", P.HIGH),
        ("n1", P.NORMAL),
        ("h2", P.HIGH),
        ("b1", P.BATCH),
        ("c1", P.CRITICAL),
        ("l2", P.LOW),
    ]:
        q.push(item, p, now=0.0)
    assert _drain(q, now=0.0) == ["c1", "h1", "h2", "n1", "l1", "l2", "b1"]


def test_aging_lifts_an_old_low_waiter_above_fresh_high_ones() -> None:
    q: PriorityQueue[str] = PriorityQueue(QueueLimits(aging_s=2.0, max_wait_s=100))
    q.push("old-batch", P.BATCH, now=0.0)
    # Fresh high-priority work keeps arriving; after 6 s batch (4) has aged to rank 1.
    for t in range(7):
        q.push(f"high@{t}", P.HIGH, now=float(t))
    assert q.pop(now=6.0).item == "high@0"  # rank 1 - 3 = -2 beats batch's 4 - 3 = 1
    served = [q.pop(now=9.0).item for _ in range(3)]
    # At 9 s batch ranks 4 - 4.5 = -0.5; high@3 ranks 1 - 3 = -2, high@4 -1.5, high@5 -1.
    assert served == ["high@1", "high@2", "high@3"]
    # Linear aging is a virtual deadline, enqueued + priority * aging_s: batch's is 8 s, so
    # high arrivals before 6 s still precede it and every later one follows it.
    assert _drain(q, now=30.0) == ["high@4", "high@5", "old-batch", "high@6"]


def test_low_never_starves_under_a_steady_stream_of_high() -> None:
    q: PriorityQueue[str] = PriorityQueue(QueueLimits(aging_s=1.0, max_wait_s=1000))
    q.push("batch", P.BATCH, now=0.0)
    served_at = None
    for t in range(100):
        q.push(f"h{t}", P.HIGH, now=float(t))
        if q.pop(now=float(t) + 0.5).item == "batch":
            served_at = t
            break
    assert served_at is not None and served_at <= 5


def test_per_priority_bound_refuses_the_arrival() -> None:
    q: PriorityQueue[str] = PriorityQueue(QueueLimits(max_total=10, max_per_priority={P.LOW: 2}))
    assert q.push("a", P.LOW, 0.0).waiter is not None
    assert q.push("b", P.LOW, 0.0).waiter is not None
    assert q.push("c", P.LOW, 0.0).waiter is None
    assert q.push("d", P.HIGH, 0.0).waiter is not None


def test_full_queue_evicts_the_newest_lowest_priority_waiter() -> None:
    q: PriorityQueue[str] = PriorityQueue(QueueLimits(max_total=3))
    q.push("low-old", P.LOW, 0.0)
    q.push("batch", P.BATCH, 1.0)
    q.push("low-new", P.LOW, 2.0)
    first = q.push("high", P.HIGH, 3.0)
    assert first.waiter is not None and first.evicted is not None
    assert first.evicted.item == "batch"  # lowest priority goes first
    second = q.push("normal", P.NORMAL, 4.0)
    assert second.evicted is not None and second.evicted.item == "low-new"  # newest of lowest
    # Nothing below low: a low arrival at a full queue is refused.
    assert q.push("low-3", P.LOW, 5.0).waiter is None
    assert len(q) == 3


def test_waiters_expire_after_the_maximum_wait() -> None:
    q: PriorityQueue[str] = PriorityQueue(QueueLimits(max_wait_s=30.0))
    q.push("a", P.HIGH, 0.0)
    q.push("b", P.LOW, 10.0)
    assert q.expire(29.9) == []
    assert [w.item for w in q.expire(30.0)] == ["a"]
    assert q.next_deadline() == 40.0
    assert [w.item for w in q.expire(41.0)] == ["b"]
    assert len(q) == 0


def test_priority_comes_from_the_tier_or_a_trusted_header() -> None:
    assert prio.resolve("enterprise", None, trusted=False) is P.HIGH
    assert prio.resolve("pro", "critical", trusted=False) is P.NORMAL  # untrusted: ignored
    assert prio.resolve("free", "critical", trusted=True) is P.CRITICAL
    assert prio.resolve("unknown-tier", None, trusted=False) is P.LOW
    with pytest.raises(prio.PriorityError):
        prio.resolve("free", "urgent", trusted=True)


class Capacity:
    """A toy model of engine capacity: saturated while ``busy >= slots``."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0

    def saturated(self, model: str) -> bool:
        return self.busy >= self.slots


async def test_gate_passes_straight_through_when_not_saturated() -> None:
    gate = QueueGate(Capacity(1).saturated)
    assert await gate.enter("m", P.LOW) == 0.0
    await gate.close()


async def test_gate_releases_waiters_in_priority_order_as_capacity_frees() -> None:
    cap = Capacity(1)
    cap.busy = 1
    gate = QueueGate(cap.saturated, QueueLimits(aging_s=1000), tick_s=0.005)
    order: list[str] = []

    async def request(name: str, p: Priority) -> None:
        await gate.enter("m", p)
        cap.busy += 1
        order.append(name)

    tasks = []
    for name, p in [("low", P.LOW), ("batch", P.BATCH), ("high", P.HIGH), ("normal", P.NORMAL)]:
        tasks.append(asyncio.create_task(request(name, p)))
        await asyncio.sleep(0)
    await asyncio.sleep(0.02)
    assert order == [] and gate.waiting("m") == 4
    for _ in range(4):
        cap.busy -= 1
        gate.poke()
        await asyncio.sleep(0.02)
    await asyncio.gather(*tasks)
    assert order == ["high", "normal", "low", "batch"]
    await gate.close()


async def test_gate_evicted_waiter_gets_429_and_timeout_gets_503() -> None:
    cap = Capacity(0)
    gate = QueueGate(cap.saturated, QueueLimits(max_total=1, max_wait_s=0.1), tick_s=0.01)
    low = asyncio.create_task(gate.enter("m", P.LOW))
    await asyncio.sleep(0)
    high = asyncio.create_task(gate.enter("m", P.HIGH))
    with pytest.raises(QueueRejected) as evicted:
        await low
    assert evicted.value.status == 429 and evicted.value.reason is Refusal.EVICTED
    with pytest.raises(QueueRejected) as timed_out:
        await high
    assert timed_out.value.status == 503 and timed_out.value.retry_after >= 1
    await gate.close()


async def test_gate_full_refuses_and_a_cancelled_waiter_leaves_the_queue() -> None:
    gate = QueueGate(Capacity(0).saturated, QueueLimits(max_total=1, max_wait_s=5))
    first = asyncio.create_task(gate.enter("m", P.HIGH))
    await asyncio.sleep(0)
    with pytest.raises(QueueRejected) as full:
        await gate.enter("m", P.LOW)
    assert full.value.status == 429 and full.value.reason is Refusal.FULL
    first.cancel()
    await asyncio.wait([first])
    assert first.cancelled()
    assert gate.waiting() == 0
    await gate.close()


def test_fake_clock_is_usable_with_the_pure_queue(clock: FakeClock) -> None:
    q: PriorityQueue[str] = PriorityQueue(QueueLimits(max_wait_s=1.0))
    q.push("a", P.NORMAL, clock())
    clock.advance(2)
    assert [w.item for w in q.expire(clock())] == ["a"]
