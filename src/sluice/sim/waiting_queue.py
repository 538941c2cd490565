"""The WAITING queue: first come first served, or by (priority, arrival) as vLLM's priority mode.

Preempted requests go back to the front (FCFS) or back into the heap, where their priority and
arrival put them ahead of later requests.
"""

from __future__ import annotations

import heapq
from collections import deque

from sluice.sim.sequence import Sequence, Status


class FcfsQueue:
    __slots__ = ("_q",)

    def __init__(self) -> None:
        self._q: deque[Sequence] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def push(self, seq: Sequence) -> None:
        self._q.append(seq)

    def push_front(self, seq: Sequence) -> None:
        self._q.appendleft(seq)

    def peek(self) -> Sequence:
        return self._q[0]

    def pop(self) -> Sequence:
        return self._q.popleft()

    def remove(self, seq: Sequence) -> None:
        self._q.remove(seq)  # O(n), but only on abort


class PriorityQueue:
    """Lower ``priority`` value first (vLLM's convention), then earlier arrival."""

    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Sequence]] = []
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, seq: Sequence) -> None:
        heapq.heappush(self._heap, (seq.priority, seq.arrival_order, seq))
        self._live += 1

    push_front = push  # a preempted request's own (priority, arrival) decides its place

    def _drop_removed(self) -> None:
        heap = self._heap
        while heap and heap[0][2].status is not Status.WAITING:
            heapq.heappop(heap)

    def peek(self) -> Sequence:
        self._drop_removed()
        return self._heap[0][2]

    def pop(self) -> Sequence:
        self._drop_removed()
        self._live -= 1
        return heapq.heappop(self._heap)[2]

    def remove(self, seq: Sequence) -> None:
        # Lazy: the caller changes the status, and the entry is skipped when it surfaces.
        self._live -= 1


WaitingQueue = FcfsQueue | PriorityQueue


def make_waiting_queue(policy: str) -> WaitingQueue:
    if policy == "fcfs":
        return FcfsQueue()
    if policy == "priority":
        return PriorityQueue()
    raise ValueError(f"unknown scheduling policy {policy!r}; known: fcfs, priority")
