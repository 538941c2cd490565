"""The asyncio shell around the priority queue: hold requests while their model is saturated.

``enter(model, priority)`` returns at once when nothing waits for that model and it is not
saturated. Otherwise the request waits; a dispatcher task releases waiters in priority order
whenever ``saturated(model)`` turns false, woken by ``poke()`` (a request finished, metrics were
scraped) and by a short tick. Between two releases it yields to the loop so the released request
can route and count itself in flight before saturation is checked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from sluice.admission.metrics import QUEUE_DEPTH, QUEUE_REJECTIONS, QUEUE_WAIT
from sluice.admission.priority import Priority
from sluice.admission.priority_queue import PriorityQueue, QueueLimits, Refusal, Waiter


class QueueRejected(Exception):
    """429 (queue full or evicted) or 503 (waited longer than the maximum)."""

    def __init__(self, reason: Refusal, retry_after: float) -> None:
        self.reason = reason
        self.status = 503 if reason is Refusal.TIMEOUT else 429
        self.retry_after = retry_after
        message = {
            Refusal.FULL: "The request queue is full; retry later.",
            Refusal.EVICTED: "The request was displaced by higher-priority work; retry later.",
            Refusal.TIMEOUT: "No capacity became free within the maximum queue wait.",
        }[reason]
        super().__init__(message)

    @property
    def code(self) -> str:
        return "queue_timeout" if self.reason is Refusal.TIMEOUT else "queue_full"


_Future = asyncio.Future[float]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class QueueGate:
    def __init__(
        self,
        saturated: Callable[[str], bool],
        limits: QueueLimits | None = None,
        tick_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._saturated = saturated
        self._limits = limits or QueueLimits()
        self._tick = tick_s
        self._clock = clock
        self._queues: dict[str, PriorityQueue[_Future]] = {}
        self._wake = asyncio.Event()
        self._sleeper: asyncio.Future[None] | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def waiting(self, model: str | None = None) -> int:
        if model is not None:
            q = self._queues.get(model)
            return len(q) if q else 0
        return sum(len(q) for q in self._queues.values())

    def free(self, model: str) -> bool:
        """True when ``enter`` would return at once (nobody waits for ``model`` and it is not
        saturated): the caller may skip the await."""
        queue = self._queues.get(model)
        return not queue and not self._saturated(model)

    async def enter(self, model: str, priority: Priority) -> float:
        """Wait for capacity; returns seconds waited. Raises ``QueueRejected``."""
        queue = self._queues.get(model)
        if (queue is None or not queue) and not self._saturated(model):
            return 0.0
        if queue is None:
            queue = self._queues[model] = PriorityQueue(self._limits)
        now = self._clock()
        future: _Future = asyncio.get_running_loop().create_future()
        pushed = queue.push(future, priority, now)
        if pushed.evicted is not None:
            self._reject(pushed.evicted, Refusal.EVICTED, now)
        if pushed.waiter is None:
            QUEUE_REJECTIONS.labels(priority.label, Refusal.FULL.value).inc()
            raise QueueRejected(Refusal.FULL, self._retry_after())
        QUEUE_DEPTH.labels(priority.label).inc()
        self._ensure_dispatcher()
        self._set_wake()
        waiter = pushed.waiter
        try:
            return await future
        except asyncio.CancelledError:
            if queue.remove(waiter):  # the client went away while waiting
                QUEUE_DEPTH.labels(priority.label).dec()
                QUEUE_WAIT.labels(priority.label, "cancelled").observe(self._clock() - now)
            raise

    def poke(self) -> None:
        """Capacity may have changed (a request finished, fresh engine metrics)."""
        if self._task is not None and self.waiting():
            self._set_wake()

    def _set_wake(self) -> None:
        self._wake.set()
        if self._sleeper is not None:
            _resolve(self._sleeper)

    def _retry_after(self) -> float:
        return max(1.0, self._limits.max_wait_s / 4)

    def _reject(self, waiter: Waiter[_Future], reason: Refusal, now: float) -> None:
        label = waiter.priority.label
        QUEUE_DEPTH.labels(label).dec()
        QUEUE_REJECTIONS.labels(label, reason.value).inc()
        QUEUE_WAIT.labels(label, reason.value).observe(now - waiter.enqueued)
        if not waiter.item.done():
            waiter.item.set_exception(QueueRejected(reason, self._retry_after()))

    def _ensure_dispatcher(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            if not self._wake.is_set():
                # Sleep until poked or one tick passes (expiry and fresh metrics need the tick).
                sleeper: asyncio.Future[None] = loop.create_future()
                handle = loop.call_later(self._tick, _resolve, sleeper)
                self._sleeper = sleeper
                try:
                    await sleeper
                finally:
                    handle.cancel()
                    self._sleeper = None
            self._wake.clear()
            await self.dispatch_once()

    async def dispatch_once(self) -> None:
        for model, queue in list(self._queues.items()):
            now = self._clock()
            for waiter in queue.expire(now):
                self._reject(waiter, Refusal.TIMEOUT, now)
            while queue and not self._saturated(model):
                now = self._clock()
                waiter = queue.pop(now)
                if waiter is None:
                    break
                label = waiter.priority.label
                QUEUE_DEPTH.labels(label).dec()
                if waiter.item.done():  # cancelled meanwhile
                    continue
                QUEUE_WAIT.labels(label, "dispatched").observe(now - waiter.enqueued)
                waiter.item.set_result(now - waiter.enqueued)
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            if not queue:
                del self._queues[model]

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._set_wake()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for queue in self._queues.values():
            while (waiter := queue.pop(self._clock())) is not None:
                if not waiter.item.done():
                    waiter.item.set_exception(QueueRejected(Refusal.TIMEOUT, 1.0))
        self._queues.clear()
