"""The waiting room. PURE: callers pass ``now``.

Waiters are served by effective priority, FIFO within a priority. Aging lifts a waiter one level
every ``aging_s`` seconds, so ``batch`` never starves behind a steady stream of ``high``. The queue
is bounded per priority and in total: an arrival at a full per-priority bound is refused; an
arrival when the total is full evicts the newest waiter of the lowest priority below its own (that
waiter gets 429), or is refused if there is none. Waiters past ``max_wait`` expire (503).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import count
from typing import Generic, TypeVar

from sluice.admission.priority import Priority

T = TypeVar("T")


class Refusal(StrEnum):
    FULL = "full"  # refused at arrival
    EVICTED = "evicted"  # pushed out by a higher-priority arrival
    TIMEOUT = "timeout"  # waited longer than max_wait


@dataclass(slots=True, eq=False)
class Waiter(Generic[T]):
    seq: int
    priority: Priority
    enqueued: float
    deadline: float
    item: T

    def rank(self, now: float, aging_s: float) -> float:
        age_levels = (now - self.enqueued) / aging_s if aging_s > 0 else 0.0
        return self.priority - age_levels


@dataclass(slots=True)
class PushResult(Generic[T]):
    waiter: Waiter[T] | None  # None: refused
    evicted: Waiter[T] | None = None


@dataclass(slots=True)
class QueueLimits:
    max_total: int = 1024
    max_per_priority: Mapping[Priority, int] = field(default_factory=dict)  # default: max_total
    aging_s: float = 10.0
    max_wait_s: float = 30.0

    def bound(self, priority: Priority) -> int:
        return self.max_per_priority.get(priority, self.max_total)


class PriorityQueue(Generic[T]):
    def __init__(self, limits: QueueLimits | None = None) -> None:
        self.limits = limits or QueueLimits()
        self._levels: dict[Priority, OrderedDict[int, Waiter[T]]] = {
            p: OrderedDict() for p in Priority
        }
        self._seq = count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def depth(self, priority: Priority) -> int:
        return len(self._levels[priority])

    def push(self, item: T, priority: Priority, now: float) -> PushResult[T]:
        level = self._levels[priority]
        if len(level) >= self.limits.bound(priority):
            return PushResult(None)
        evicted: Waiter[T] | None = None
        if self._size >= self.limits.max_total:
            victim_level = next(
                (p for p in reversed(Priority) if p > priority and self._levels[p]), None
            )
            if victim_level is None:
                return PushResult(None)
            _, evicted = self._levels[victim_level].popitem(last=True)  # the newest
            self._size -= 1
        waiter = Waiter(next(self._seq), priority, now, now + self.limits.max_wait_s, item)
        level[waiter.seq] = waiter
        self._size += 1
        return PushResult(waiter, evicted)

    def peek(self, now: float) -> Waiter[T] | None:
        """The waiter to serve next: best effective rank; ties go to the earliest arrival."""
        best: Waiter[T] | None = None
        best_key: tuple[float, int] | None = None
        for level in self._levels.values():
            if not level:
                continue
            head = next(iter(level.values()))  # oldest of its level: best rank within it
            key = (head.rank(now, self.limits.aging_s), head.seq)
            if best_key is None or key < best_key:
                best, best_key = head, key
        return best

    def pop(self, now: float) -> Waiter[T] | None:
        waiter = self.peek(now)
        if waiter is not None:
            self.remove(waiter)
        return waiter

    def remove(self, waiter: Waiter[T]) -> bool:
        """Take a waiter out (its client went away). False if it was no longer queued."""
        if self._levels[waiter.priority].pop(waiter.seq, None) is None:
            return False
        self._size -= 1
        return True

    def expire(self, now: float) -> list[Waiter[T]]:
        """Remove and return every waiter whose deadline has passed."""
        out: list[Waiter[T]] = []
        for level in self._levels.values():
            while level:
                head = next(iter(level.values()))
                if head.deadline > now:
                    break
                level.popitem(last=False)
                self._size -= 1
                out.append(head)
        return out

    def next_deadline(self) -> float | None:
        heads = [next(iter(lv.values())).deadline for lv in self._levels.values() if lv]
        return min(heads, default=None)
