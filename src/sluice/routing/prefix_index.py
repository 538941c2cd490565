"""Which endpoints hold which prompt prefixes: chained block hash -> set of endpoints.

Layout, chosen so that a lookup costs O(prompt blocks) and not O(endpoints x prompt):

* ``_holders``: block hash -> bitmask of endpoint slots holding that block. One dict lookup and
  one integer AND per prompt block, whatever the number of endpoints.
* ``_lru[slot]``: the blocks one endpoint holds, least recently used first. Its length is bounded
  by that endpoint's capacity (its KV block count, from ``vllm:cache_config_info``); going over
  evicts from the front, so the index can never outgrow the caches it mirrors.

Two ways to fill it, one structure: the approximate mode calls ``record`` with the prompt of each
request it routed (or ``pin`` / ``unpin`` around each request, modelling the engine's free queue,
below); the precise mode (``routing.kv_mirror``) calls ``add``/``discard``/``clear`` as
the engines report KV events; one endpoint is filled one way or the other, never both (``pin``
is for approximate mode only). Pure: no I/O, no clock.

Modelling the engine's free queue (``pin`` / ``unpin`` / ``set_idle_capacity``): an engine can
evict only blocks no running request holds, and only as many as its free pool lacks. A prompt
in flight is *pinned* (held, never evicted, outside the LRU); when its request ends it joins the
LRU tail as the engine's free queue does; the LRU is then also bounded by the engine's free
blocks, ``(1 - kv_usage) x blocks``. When the engines fill up with running requests, the
conversations waiting between turns are evicted here as they are there, instead of being
believed cached until the index itself overflows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Llama-3-8B on one H100 at 90% memory holds about this many 16-token blocks; used until the
# endpoint's real block count is known (llm-d uses the same fallback).
DEFAULT_CAPACITY_BLOCKS = 31_250
_ABSENT = object()


@dataclass(slots=True)
class IndexStats:
    """Size and hit statistics, exported as metrics."""

    blocks: int = 0  # (endpoint, block) entries: the memory that matters
    unique_blocks: int = 0
    endpoints: int = 0
    capacity: int = 0
    lookups: int = 0
    lookup_blocks: int = 0  # prompt blocks looked up
    hit_blocks: int = 0  # of those, blocks matched on the best endpoint
    evictions: int = 0
    per_endpoint: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (size, cap)
    pinned: dict[str, int] = field(default_factory=dict)  # id -> blocks of requests in flight

    @property
    def hit_rate(self) -> float:
        return self.hit_blocks / self.lookup_blocks if self.lookup_blocks else 0.0


class PrefixIndex:
    """Chained block hashes -> endpoints, bounded per endpoint with LRU eviction."""

    def __init__(
        self, default_capacity: int = DEFAULT_CAPACITY_BLOCKS, tokens_per_block: int = 16
    ) -> None:
        if default_capacity <= 0 or tokens_per_block <= 0:
            raise ValueError("capacity and tokens_per_block must be positive")
        self.default_capacity = default_capacity
        # How many prompt tokens one index block stands for (the engine block size in precise
        # mode; block bytes / ~4 in approximate mode). Policies use it to turn depth into tokens.
        self.tokens_per_block = tokens_per_block
        self._holders: dict[int, int] = {}
        self._slot_of: dict[str, int] = {}
        self._id_of: list[str | None] = []
        self._lru: list[OrderedDict[int, None]] = []
        self._pins: list[dict[int, int]] = []  # block -> requests in flight holding it
        self._capacity: list[int] = []
        self._idle_capacity: list[int | None] = []
        self._free: list[int] = []
        self._lookups = 0
        self._lookup_blocks = 0
        self._hit_blocks = 0
        self._evictions = 0
        # Generated-block placeholders are negative (block hashes are unsigned 64-bit).
        self._next_placeholder = -1

    # ----------------------------------------------------------------- endpoints and bounds
    def _slot(self, endpoint_id: str) -> int:
        slot = self._slot_of.get(endpoint_id)
        if slot is None:
            if self._free:
                slot = self._free.pop()
                self._id_of[slot] = endpoint_id
                self._lru[slot] = OrderedDict()
                self._pins[slot] = {}
                self._capacity[slot] = self.default_capacity
                self._idle_capacity[slot] = None
            else:
                slot = len(self._id_of)
                self._id_of.append(endpoint_id)
                self._lru.append(OrderedDict())
                self._pins.append({})
                self._capacity.append(self.default_capacity)
                self._idle_capacity.append(None)
            self._slot_of[endpoint_id] = slot
        return slot

    def set_capacity(self, endpoint_id: str, blocks: int) -> None:
        """Bound one endpoint's entries (its engine's KV block count, in index blocks)."""
        slot = self._slot(endpoint_id)
        self._capacity[slot] = max(1, blocks)
        self._evict_over(slot)

    def set_idle_capacity(self, endpoint_id: str, blocks: int | None) -> None:
        """Bound one endpoint's unpinned entries (its engine's free blocks; None: no such bound)."""
        slot = self._slot(endpoint_id)
        self._idle_capacity[slot] = None if blocks is None else max(0, blocks)
        self._evict_over(slot)

    def idle_capacity(self, endpoint_id: str) -> int | None:
        slot = self._slot_of.get(endpoint_id)
        return None if slot is None else self._idle_capacity[slot]

    def capacity(self, endpoint_id: str) -> int:
        slot = self._slot_of.get(endpoint_id)
        return self.default_capacity if slot is None else self._capacity[slot]

    def size(self, endpoint_id: str) -> int:
        slot = self._slot_of.get(endpoint_id)
        return 0 if slot is None else len(self._lru[slot]) + len(self._pins[slot])

    def pinned(self, endpoint_id: str) -> int:
        slot = self._slot_of.get(endpoint_id)
        return 0 if slot is None else len(self._pins[slot])

    def endpoints(self) -> list[str]:
        return list(self._slot_of)

    def remove_endpoint(self, endpoint_id: str) -> None:
        """Forget an endpoint that left the fleet (its slot is reused)."""
        slot = self._slot_of.pop(endpoint_id, None)
        if slot is None:
            return
        self._clear_slot(slot)
        self._id_of[slot] = None
        self._free.append(slot)

    # ----------------------------------------------------------------------------- lookup
    def match(
        self, block_hashes: Sequence[int], among: Iterable[str] | None = None
    ) -> dict[str, int]:
        """Matched prefix depth (in blocks) per endpoint, for endpoints matching at least one.

        Depth counts leading blocks only, stopping at an endpoint's first miss, as the engine's
        own lookup does. Cost: one dict lookup per block until no endpoint is left matching.
        """
        self._lookups += 1
        self._lookup_blocks += len(block_hashes)
        if among is None:
            active = -1  # every slot
        else:
            active = 0
            for endpoint_id in among:
                slot = self._slot_of.get(endpoint_id)
                if slot is not None:
                    active |= 1 << slot
        depths: dict[str, int] = {}
        holders = self._holders
        for depth, h in enumerate(block_hashes):
            still = active & holders.get(h, 0)
            if still != active:
                if depth:
                    self._assign(active & ~still, depth, depths)
                active = still
                if not active:
                    break
        else:
            if block_hashes and active:
                self._assign(active, len(block_hashes), depths)
        if depths:
            self._hit_blocks += max(depths.values())
        return depths

    def _assign(self, bits: int, depth: int, out: dict[str, int]) -> None:
        ids = self._id_of
        while bits:
            low = bits & -bits
            endpoint_id = ids[low.bit_length() - 1]
            if endpoint_id is not None:
                out[endpoint_id] = depth
            bits ^= low

    # ----------------------------------------------------------------------------- update
    def record(self, endpoint_id: str, block_hashes: Sequence[int]) -> None:
        """Approximate mode: ``endpoint_id`` now caches this prompt (it was routed there).

        Touched back to front so the prompt's first block is the most recently used: eviction
        then takes chain tails first, as the engine's own free queue does, and a partly evicted
        prompt still matches on its head.
        """
        self.add(endpoint_id, reversed(block_hashes))

    def add(self, endpoint_id: str, block_hashes: Iterable[int]) -> None:
        """Mark blocks as held (most recent last), evicting least recently used ones over bound."""
        slot = self._slot(endpoint_id)
        lru = self._lru[slot]
        bit = 1 << slot
        holders = self._holders
        get = holders.get
        touch = lru.move_to_end
        for h in block_hashes:
            if h in lru:
                touch(h)
            else:
                lru[h] = None
                holders[h] = get(h, 0) | bit
        self._evict_over(slot)

    def pin(self, endpoint_id: str, block_hashes: Sequence[int]) -> None:
        """A request holding this prompt is in flight on ``endpoint_id``: held, not evictable."""
        slot = self._slot(endpoint_id)
        lru, pins = self._lru[slot], self._pins[slot]
        bit = 1 << slot
        holders = self._holders
        for h in block_hashes:
            count = pins.get(h)
            if count is not None:
                pins[h] = count + 1
                continue
            pins[h] = 1
            if lru.pop(h, _ABSENT) is _ABSENT:  # new to this endpoint (LRU values are None)
                holders[h] = holders.get(h, 0) | bit
        self._evict_over(slot)

    def unpin(
        self, endpoint_id: str, block_hashes: Sequence[int], generated_blocks: int = 0
    ) -> None:
        """That request ended: its blocks join the LRU tail, the prompt's head last (most
        recent), so eviction takes chain tails first, as the engine's free queue does.

        ``generated_blocks``: the blocks its output filled, which the engine frees (and keeps
        cached) with the prompt's. No prompt names them yet, so they enter as placeholders
        ahead of the prompt's tail: they take idle room and are evicted first, as there.
        Without them the index believes every idle conversation smaller than it is, and
        keeps conversations the engine has already evicted.
        """
        slot = self._slot_of.get(endpoint_id)
        if slot is None:
            return
        lru, pins = self._lru[slot], self._pins[slot]
        released = generated_blocks
        if generated_blocks > 0:
            start = self._next_placeholder
            self._next_placeholder = start - generated_blocks
            lru.update(dict.fromkeys(range(start, start - generated_blocks, -1)))
        for h in reversed(block_hashes):
            count = pins.get(h)
            if count is None:  # cleared meanwhile
                continue
            if count > 1:
                pins[h] = count - 1
            else:
                del pins[h]
                lru[h] = None
                released += 1
        idle = self._idle_capacity[slot]
        if idle is not None:
            # The engine's free pool grew by these blocks; the next scrape will say so.
            self._idle_capacity[slot] = idle + released
        self._evict_over(slot)

    def discard(self, endpoint_id: str, block_hashes: Iterable[int]) -> None:
        """Precise mode: the engine evicted these blocks."""
        slot = self._slot_of.get(endpoint_id)
        if slot is None:
            return
        lru = self._lru[slot]
        for h in block_hashes:
            if lru.pop(h, 0) is None:  # present (values are None)
                self._drop_holder(h, slot)

    def clear(self, endpoint_id: str) -> None:
        """Precise mode: the engine reset its prefix cache (AllBlocksCleared)."""
        slot = self._slot_of.get(endpoint_id)
        if slot is not None:
            self._clear_slot(slot)

    def _evict_over(self, slot: int) -> None:
        lru = self._lru[slot]
        over = len(lru) + len(self._pins[slot]) - self._capacity[slot]
        idle = self._idle_capacity[slot]
        if idle is not None:
            over = max(over, len(lru) - idle)
        # Pinned blocks are never evicted: only in-flight prompts can hold the size above bound.
        over = min(over, len(lru))
        if over <= 0:
            return
        # Inlined _drop_holder: a long prompt can evict thousands of blocks in one call.
        holders = self._holders
        keep = ~(1 << slot)
        popitem = lru.popitem
        for _ in range(over):
            h = popitem(last=False)[0]
            if h < 0:  # a placeholder for generated blocks: no holder entry
                continue
            mask = holders[h] & keep
            if mask:
                holders[h] = mask
            else:
                del holders[h]
        self._evictions += over

    def _drop_holder(self, h: int, slot: int) -> None:
        mask = self._holders.get(h, 0) & ~(1 << slot)
        if mask:
            self._holders[h] = mask
        else:
            self._holders.pop(h, None)

    def _clear_slot(self, slot: int) -> None:
        for h in self._lru[slot]:
            self._drop_holder(h, slot)
        for h in self._pins[slot]:
            self._drop_holder(h, slot)
        self._lru[slot] = OrderedDict()
        self._pins[slot] = {}

    # ------------------------------------------------------------------------------ stats
    def stats(self) -> IndexStats:
        per = {
            endpoint_id: (self.size(endpoint_id), self._capacity[slot])
            for endpoint_id, slot in self._slot_of.items()
        }
        return IndexStats(
            blocks=sum(size for size, _ in per.values()),
            unique_blocks=len(self._holders),
            endpoints=len(per),
            capacity=sum(cap for _, cap in per.values()),
            lookups=self._lookups,
            lookup_blocks=self._lookup_blocks,
            hit_blocks=self._hit_blocks,
            evictions=self._evictions,
            per_endpoint=per,
            pinned={endpoint: len(self._pins[slot]) for endpoint, slot in self._slot_of.items()},
        )
