"""The KV block pool: ref counts, prefix caching, LRU eviction order and the events it emits."""

from __future__ import annotations

import pytest

from sluice.sim.block_hash import hash_token_blocks
from sluice.sim.block_pool import BlockPool, KVBlock
from sluice.sim.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

BS = 4


def make_pool(num_blocks: int = 9) -> BlockPool:
    pool = BlockPool(num_blocks, BS)
    pool.record_events = True
    return pool


def store_chain(pool: BlockPool, tokens: list[int]) -> tuple[list[KVBlock], list[int]]:
    """Allocate blocks for ``tokens`` (a whole number of blocks) and cache them as one request."""
    hashes = hash_token_blocks(tokens, BS)
    blocks = pool.allocate(len(hashes))
    pool.cache_blocks(blocks, hashes, 0, len(hashes), tokens, None)
    return blocks, hashes


def test_usage_follows_vllm_formula_and_idle_cached_blocks_count_as_free() -> None:
    pool = make_pool(9)  # 8 usable blocks: block 0 is the null block
    blocks, _ = store_chain(pool, list(range(12)))
    assert pool.usage() == pytest.approx(3 / 8)
    pool.free(blocks)
    assert pool.usage() == 0.0
    assert len(pool.cached) == 3  # still cached, still hittable


def test_lookup_stops_at_first_miss_and_respects_the_limit() -> None:
    pool = make_pool()
    _, hashes = store_chain(pool, list(range(12)))
    assert len(pool.lookup(hashes, 3)) == 3
    assert len(pool.lookup(hashes, 2)) == 2
    other = hash_token_blocks([*range(4), 99, 98, 97, 96, *range(8, 12)], BS)
    assert len(pool.lookup(other, 3)) == 1  # diverges in block 2; block 3's chain differs too


def test_eviction_is_lru_and_takes_chain_tails_first() -> None:
    pool = make_pool(7)  # 6 usable blocks
    a_blocks, a = store_chain(pool, list(range(100, 112)))  # 3 blocks
    b_blocks, b = store_chain(pool, list(range(200, 212)))  # 3 blocks
    pool.free(a_blocks)  # older: evicted first, tail block first
    pool.free(b_blocks)
    pool.drain_events()
    got = pool.allocate(4)
    assert [blk.block_hash for blk in got] == [None] * 4
    removed = [e for e in pool.drain_events() if isinstance(e, BlockRemoved)]
    assert [h for e in removed for h in e.block_hashes] == [a[2], a[1], a[0], b[2]]
    assert set(pool.cached) == {b[0], b[1]}


def test_touching_a_free_cached_block_makes_it_most_recently_used() -> None:
    pool = make_pool(7)
    a_blocks, a = store_chain(pool, list(range(100, 108)))  # 2 blocks
    b_blocks, b = store_chain(pool, list(range(200, 208)))
    pool.free(a_blocks)
    pool.free(b_blocks)
    hit = pool.lookup(a, 2)
    pool.touch(hit)  # a is in use again, out of the free queue
    assert pool.num_free == 4
    pool.free(hit)  # ...and back at the tail, behind b
    pool.drain_events()
    pool.allocate(4)  # 2 never-used blocks, then b's two
    removed = [e for e in pool.drain_events() if isinstance(e, BlockRemoved)]
    assert [h for e in removed for h in e.block_hashes] == [b[1], b[0]]
    assert set(pool.cached) == set(a)


def test_shared_blocks_are_freed_only_when_the_last_reference_goes() -> None:
    pool = make_pool()
    blocks, hashes = store_chain(pool, list(range(8)))
    pool.touch(pool.lookup(hashes, 2))  # a second request shares both blocks
    assert [blk.ref_cnt for blk in blocks] == [2, 2]
    pool.free(blocks)
    assert pool.num_free == 6
    pool.free(blocks)
    assert pool.num_free == 8


def test_stored_event_carries_parent_tokens_and_block_size() -> None:
    pool = make_pool()
    tokens = list(range(12))
    hashes = hash_token_blocks(tokens, BS)
    blocks = pool.allocate(3)
    pool.cache_blocks(blocks, hashes, 0, 1, tokens, None)
    pool.cache_blocks(blocks, hashes, 1, 3, tokens, "adapter")
    first, rest = pool.drain_events()
    assert first == BlockStored([hashes[0]], None, [0, 1, 2, 3], BS, None)
    assert rest == BlockStored(hashes[1:], hashes[0], list(range(4, 12)), BS, "adapter")


def test_a_block_already_cached_elsewhere_is_not_registered_twice() -> None:
    pool = make_pool()
    tokens = list(range(8))
    first, hashes = store_chain(pool, tokens)
    twin = pool.allocate(2)  # computed the same tokens before it could hit the cache
    pool.drain_events()
    pool.cache_blocks(twin, hashes, 0, 2, tokens, None)
    assert pool.drain_events() == []
    assert [blk.block_hash for blk in twin] == [None, None]
    assert pool.cached[hashes[0]] is first[0]


def test_allocating_more_than_free_raises() -> None:
    pool = make_pool(3)
    with pytest.raises(ValueError, match="cannot allocate 3 blocks"):
        pool.allocate(3)


def test_reset_prefix_cache_only_when_nothing_is_in_use() -> None:
    pool = make_pool()
    blocks, _ = store_chain(pool, list(range(8)))
    pool.drain_events()
    assert pool.reset_prefix_cache() is False
    pool.free(blocks)
    assert pool.reset_prefix_cache() is True
    assert pool.cached == {}
    assert pool.drain_events() == [AllBlocksCleared()]
    assert all(blk.block_hash is None for blk in pool.blocks)


def test_caching_disabled_registers_nothing() -> None:
    pool = BlockPool(9, BS, enable_caching=False)
    pool.record_events = True
    store_chain(pool, list(range(8)))
    assert pool.cached == {}
    assert pool.drain_events() == []
