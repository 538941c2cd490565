"""The paged KV block pool with automatic prefix caching (vLLM V1 ``block_pool.py``).

* ``num_blocks`` blocks of ``block_size`` tokens; block 0 is reserved (vLLM's null block).
* A full block that has been computed gets a hash and is registered in ``cached`` (one block per
  hash: a block whose hash is already registered stays anonymous, so KV events name each hash once
  and a mirror built from them equals ``cached`` exactly).
* Freed blocks (ref count 0) join the tail of an LRU free queue, a chain in reverse so that its
  tail is evicted first. They keep their hash and can still be hit; a hit takes them back out.
* Eviction is lazy: a block that still has a hash is unregistered only when it is reallocated,
  which emits ``BlockRemoved``.

Every operation is O(1) per block: the free queue is an intrusive doubly linked list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from sluice.sim.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


class KVBlock:
    __slots__ = ("block_hash", "block_id", "next_free", "prev_free", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: int | None = None
        self.prev_free: KVBlock | None = None
        self.next_free: KVBlock | None = None

    def __repr__(self) -> str:
        return f"KVBlock({self.block_id}, ref={self.ref_cnt}, hash={self.block_hash})"


class FreeBlockQueue:
    """Doubly linked LRU list between two sentinels: pop from the head, append at the tail.

    Blocks never used yet sit at the head in id order and are only counted (``num_fresh``) until
    popped: ``make_fresh(n)`` then creates the next ``n``. A thousand engines of 27k blocks each
    would otherwise build 27 million block objects before the first request.
    """

    __slots__ = ("_head", "_make_fresh", "_tail", "num_free", "num_fresh")

    def __init__(
        self,
        blocks: Iterable[KVBlock] = (),
        num_fresh: int = 0,
        make_fresh: Callable[[int], list[KVBlock] | KVBlock] | None = None,
    ) -> None:
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free = 0
        self.num_fresh = num_fresh
        self._make_fresh = make_fresh
        for block in blocks:
            self.append(block)
        self.num_free += num_fresh

    def popleft(self) -> KVBlock:
        if self.num_fresh:  # the decode path's one block: skip the list _take_fresh builds
            self.num_fresh -= 1
            self.num_free -= 1
            return self._make_fresh(0)  # type: ignore[misc, return-value]
        block = self._head.next_free
        if block is self._tail or block is None:
            raise IndexError("no free blocks")
        self.remove(block)
        return block

    def _take_fresh(self, n: int) -> list[KVBlock]:
        self.num_fresh -= n
        self.num_free -= n
        return self._make_fresh(n)  # type: ignore[misc, return-value]

    def remove(self, block: KVBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        prev.next_free = nxt  # type: ignore[union-attr]
        nxt.prev_free = prev  # type: ignore[union-attr]
        block.prev_free = block.next_free = None
        self.num_free -= 1

    def append(self, block: KVBlock) -> None:
        last = self._tail.prev_free
        last.next_free = block  # type: ignore[union-attr]
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free += 1

    def popleft_many(self, n: int) -> list[KVBlock]:
        """The ``n`` least recently used blocks, unlinked as one run (a prompt's allocation)."""
        if n > self.num_free:
            raise IndexError(f"{n} blocks requested, {self.num_free} free")
        fresh = min(n, self.num_fresh)
        out = self._take_fresh(fresh) if fresh else []
        n -= fresh
        if not n:
            return out
        # Taken blocks keep stale links: nothing reads them until ``append``/``extend`` relinks
        # (a referenced block is never ``remove``d), and clearing them is a pass over the run.
        block = self._head.next_free
        for _ in range(n):
            out.append(block)  # type: ignore[arg-type]
            block = block.next_free  # type: ignore[union-attr]
        self._head.next_free = block
        block.prev_free = self._head  # type: ignore[union-attr]
        self.num_free -= n
        return out

    def take(self, n: int, cached: dict[int, KVBlock]) -> list[KVBlock]:
        """``popleft_many`` fused with what allocation does to each block (unregister its hash
        from ``cached``, one reference), in one pass: the prefill hot path without KV events."""
        if n > self.num_free:
            raise IndexError(f"{n} blocks requested, {self.num_free} free")
        fresh = min(n, self.num_fresh)
        out = self._take_fresh(fresh) if fresh else []
        for block in out:
            block.ref_cnt = 1
        n -= fresh
        if not n:
            return out
        block = self._head.next_free
        keep = out.append
        for _ in range(n):
            h = block.block_hash  # type: ignore[union-attr]
            if h is not None:
                del cached[h]
                block.block_hash = None  # type: ignore[union-attr]
            block.ref_cnt = 1  # type: ignore[union-attr]
            keep(block)  # type: ignore[arg-type]
            block = block.next_free  # type: ignore[union-attr]
        self._head.next_free = block
        block.prev_free = self._head  # type: ignore[union-attr]
        self.num_free -= n
        return out

    def release(self, blocks: Sequence[KVBlock]) -> None:
        """Drop one reference from each of ``blocks`` and append those now idle, last block
        first (so a chain's tail is evicted first), in one pass."""
        tail = self._tail
        last = tail.prev_free
        count = 0
        for block in reversed(blocks):
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                last.next_free = block  # type: ignore[union-attr]
                block.prev_free = last
                last = block
                count += 1
        last.next_free = tail  # type: ignore[union-attr]
        tail.prev_free = last
        self.num_free += count

    def extend(self, blocks: Iterable[KVBlock]) -> None:
        """Append blocks at the tail in the given order, linking them as one run."""
        tail = self._tail
        last = tail.prev_free
        count = 0
        for block in blocks:
            last.next_free = block  # type: ignore[union-attr]
            block.prev_free = last
            last = block
            count += 1
        last.next_free = tail  # type: ignore[union-attr]
        tail.prev_free = last
        self.num_free += count


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError("num_blocks must be at least 2 (block 0 is reserved)")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        # Blocks created so far, by id (block 0 and those ever allocated; see FreeBlockQueue).
        self.blocks = [KVBlock(0)]
        self.free_queue = FreeBlockQueue((), num_blocks - 1, self._create)
        self.cached: dict[int, KVBlock] = {}
        # Events since the last drain; the engine hands them to its sink once per step.
        self.events: list[KVEvent] = []
        self.record_events = False

    def _create(self, n: int) -> list[KVBlock] | KVBlock:
        """The next ``n`` never-used blocks; ``n == 0``: the next one, not in a list."""
        blocks = self.blocks
        first = len(blocks)
        if n == 0:
            block = KVBlock(first)
            blocks.append(block)
            return block
        new = [KVBlock(i) for i in range(first, first + n)]
        blocks.extend(new)
        return new

    @property
    def num_free(self) -> int:
        """Blocks not referenced by any request, cached ones included (they are evictable)."""
        return self.free_queue.num_free

    def usage(self) -> float:
        """vLLM's ``kv_cache_usage_perc``: idle cached blocks count as free."""
        return 1.0 - self.free_queue.num_free / (self.num_blocks - 1)

    def lookup(self, block_hashes: Sequence[int], max_blocks: int) -> list[KVBlock]:
        """The longest run of cached blocks for a prefix, stopping at the first miss."""
        hits: list[KVBlock] = []
        cached = self.cached
        for i in range(min(max_blocks, len(block_hashes))):
            block = cached.get(block_hashes[i])
            if block is None:
                break
            hits.append(block)
        return hits

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take a reference on hit blocks; idle ones leave the free queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def allocate(self, n: int) -> list[KVBlock]:
        if n > self.free_queue.num_free:
            raise ValueError(f"cannot allocate {n} blocks, {self.free_queue.num_free} free")
        if not self.record_events:
            return self.free_queue.take(n, self.cached)
        out = self.free_queue.popleft_many(n)
        evicted: list[int] = []
        cached = self.cached
        for block in out:
            h = block.block_hash
            if h is not None:
                evicted.append(h)
                del cached[h]
                block.block_hash = None
            block.ref_cnt = 1
        if evicted and self.record_events:
            self.events.append(BlockRemoved(evicted))
        return out

    def allocate_one(self) -> KVBlock:
        """``allocate(1)`` without the list: the decode hot path needs one block every 16 steps."""
        block = self.free_queue.popleft()
        if block.block_hash is not None:
            del self.cached[block.block_hash]
            if self.record_events:
                self.events.append(BlockRemoved([block.block_hash]))
            block.block_hash = None
        block.ref_cnt = 1
        return block

    def free(self, blocks: Sequence[KVBlock]) -> None:
        """Drop one reference from each block; idle ones join the LRU tail, chain tail first."""
        self.free_queue.release(blocks)

    def cache_blocks(
        self,
        blocks: Sequence[KVBlock],
        block_hashes: Sequence[int],
        start: int,
        end: int,
        token_ids: Sequence[int],
        lora_name: str | None,
    ) -> None:
        """Register blocks ``start..end-1`` of a request (now full and computed) under their hashes.

        Emits one ``BlockStored`` per contiguous run of newly registered blocks.
        """
        if not self.enable_caching:
            return
        cached = self.cached
        if not self.record_events:
            # The prefill hot path. Blocks past a request's cached ones are fresh (hits come
            # first in its table), so only a concurrent twin's hash can already be registered.
            for h, block in zip(block_hashes[start:end], blocks[start:end], strict=True):
                if h not in cached:
                    block.block_hash = h
                    cached[h] = block
            return
        run: list[int] = []
        run_start = start
        for i in range(start, end):
            h = block_hashes[i]
            block = blocks[i]
            if h in cached or block.block_hash is not None:
                # Already cached elsewhere (a concurrent twin) or already ours: nothing to store.
                self._emit_stored(run, run_start, block_hashes, token_ids, lora_name)
                run = []
                run_start = i + 1
                continue
            block.block_hash = h
            cached[h] = block
            run.append(h)
        self._emit_stored(run, run_start, block_hashes, token_ids, lora_name)

    def cache_block(
        self,
        block: KVBlock,
        block_hash: int,
        parent: int | None,
        token_ids: Sequence[int],
        lora_name: str | None,
    ) -> None:
        """``cache_blocks`` for one block (the decode path fills one at a time);
        ``token_ids`` are that block's tokens."""
        if block_hash in self.cached or block.block_hash is not None:
            return
        block.block_hash = block_hash
        self.cached[block_hash] = block
        if self.record_events:
            self.events.append(
                BlockStored([block_hash], parent, list(token_ids), self.block_size, lora_name)
            )

    def _emit_stored(
        self,
        run: list[int],
        first: int,
        block_hashes: Sequence[int],
        token_ids: Sequence[int],
        lora_name: str | None,
    ) -> None:
        if not run or not self.record_events:
            return
        bs = self.block_size
        parent = block_hashes[first - 1] if first > 0 else None
        tokens = list(token_ids[first * bs : (first + len(run)) * bs])
        self.events.append(BlockStored(run, parent, tokens, bs, lora_name))

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; only possible when no block is referenced (vLLM's rule)."""
        if self.free_queue.num_free != self.num_blocks - 1:
            return False
        for block in self.cached.values():
            block.block_hash = None
        self.cached.clear()
        if self.record_events:
            self.events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        events, self.events = self.events, []
        return events
