"""A stretch of pure-decode steps, planned ahead so a caller can jump over them.

When every running request decodes, nobody waits, no request stops within the stretch and free
KV blocks cover every block the stretch will allocate, each step is fully determined: every
request gets one token, each step costs what ``LatencyModel.decode_ends`` says, and the only
changes to the block pool are one new block per request every ``block_size`` tokens and the
caching of each block it fills. ``Engine.plan_decode_run`` computes the steps' end times
without touching any state; ``Engine.advance_decode_run`` then applies the first ``m`` of them at
once, with the pool operations in exactly the order step-by-step decoding would have made them
(allocation order decides which cached blocks are evicted).

The cluster simulator uses this to replace hundreds of nearly empty steps per request with one
event (``sluice.bench.cluster``); results are identical to stepping (tests check it).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from sluice.sim.sequence import Sequence

ALLOCATE = 0
CACHE = 1


class DecodeRun:
    """Steps ``1..len(ends)`` of a pure-decode stretch starting at ``start`` (not yet applied).

    ``ends[j-1]`` is the engine clock after step ``j``; ``busy[j-1]`` that step's duration as the
    latency model priced it. ``ops`` are the pool operations ``(step, position in seqs, kind)``
    in the order the steps make them; ``alloc_steps[i]`` is the step of the ``i``-th allocation,
    so ``free0 - blocks_allocated(m)`` is the free-block count after step ``m``.
    """

    __slots__ = ("alloc_steps", "busy", "context", "ends", "free0", "ops", "seqs", "start")

    def __init__(
        self,
        seqs: list[Sequence],
        start: float,
        context: int,
        ends: list[float],
        busy: list[float],
        ops: list[tuple[int, int, int]],
        free0: int,
    ) -> None:
        self.seqs = seqs
        self.start = start
        self.context = context  # Σ computed tokens of seqs before the first step
        self.ends = ends
        self.busy = busy
        self.ops = ops
        self.free0 = free0
        self.alloc_steps = [j for j, _, kind in ops if kind == ALLOCATE]

    @property
    def num_steps(self) -> int:
        return len(self.ends)

    def blocks_allocated(self, steps: int) -> int:
        """Blocks the first ``steps`` steps take from the free queue."""
        return bisect_right(self.alloc_steps, steps)

    def steps_started_by(self, t: float, inclusive: bool) -> int:
        """How many steps have begun at time ``t`` (at least the first: a run is planned when it
        begins; each next step begins when the previous one ends); ``inclusive``: a step that
        begins exactly at ``t`` counts."""
        ends = self.ends
        ended = bisect_right(ends, t) if inclusive else bisect_left(ends, t)
        return min(ended + 1, len(ends))


def block_ops(seqs: list[Sequence], steps: int, block_size: int) -> list[tuple[int, int, int]]:
    """The allocations and cache registrations of ``steps`` decode steps, in step order.

    In step ``j`` (1-based) a request computes token ``num_tokens + j - 1``: it needs a new block
    when that exceeds its capacity, and registers a block when that reaches ``next_cache_at``;
    both recur every ``block_size`` steps. Within a step requests go in running order, each
    allocating before caching (``Engine._postprocess``).
    """
    ops: list[tuple[int, int, int]] = []
    for pos, seq in enumerate(seqs):
        first_alloc = seq.capacity - seq.num_tokens + 2
        ops.extend((j, pos, ALLOCATE) for j in range(first_alloc, steps + 1, block_size))
        first_cache = seq.next_cache_at - seq.num_tokens + 1
        if first_cache <= steps:  # never, without prefix caching (next_cache_at is huge)
            ops.extend((j, pos, CACHE) for j in range(first_cache, steps + 1, block_size))
    ops.sort()
    return ops


def allocations(seqs: list[Sequence], steps: int, block_size: int) -> int:
    """How many blocks ``steps`` decode steps allocate (``block_ops`` counted, not listed)."""
    total = 0
    for seq in seqs:
        first = seq.capacity - seq.num_tokens + 2
        if first <= steps:
            total += (steps - first) // block_size + 1
    return total
