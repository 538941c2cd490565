"""Precise mode: KV events re-hashed into our chain, so request-side hashes find them."""

from __future__ import annotations

from sluice.routing.hashing import hash_token_blocks
from sluice.routing.kv_mirror import AllBlocksCleared, BlockRemoved, BlockStored, KvEventMirror
from sluice.routing.prefix_index import PrefixIndex

TOKENS = list(range(100, 100 + 64))  # 4 blocks of 16


def _stored(engine_hashes: list[int], parent: int | None, tokens: list[int], lora=None):
    return BlockStored(engine_hashes, parent, tokens, 16, lora)


def test_stored_blocks_match_the_request_side_chain_across_batches() -> None:
    mirror = KvEventMirror(PrefixIndex())
    # The engine's own (opaque) hashes; stored in two events, the second chained by parent.
    mirror.apply("e1", _stored([901, 902], None, TOKENS[:32]))
    mirror.apply("e1", _stored([903, 904], 902, TOKENS[32:]))
    request = hash_token_blocks(TOKENS, 16)
    assert mirror.index.match(request) == {"e1": 4}


def test_removed_and_cleared_blocks_stop_matching() -> None:
    mirror = KvEventMirror(PrefixIndex())
    mirror.apply("e1", _stored([1, 2, 3, 4], None, TOKENS))
    mirror.apply("e2", _stored([1, 2, 3, 4], None, TOKENS))
    mirror.apply("e1", BlockRemoved([3]))
    request = hash_token_blocks(TOKENS, 16)
    assert mirror.index.match(request) == {"e1": 2, "e2": 4}
    mirror.apply("e2", AllBlocksCleared())
    assert mirror.index.match(request) == {"e1": 2}
    assert mirror.mapped_blocks("e2") == 0


def test_duplicate_engine_blocks_need_as_many_removals() -> None:
    mirror = KvEventMirror(PrefixIndex())
    mirror.apply("e1", _stored([1, 2], None, TOKENS[:32]))
    mirror.apply("e1", _stored([1, 2], None, TOKENS[:32]))  # not de-duplicated by the engine
    mirror.apply("e1", BlockRemoved([2]))
    request = hash_token_blocks(TOKENS[:32], 16)
    assert mirror.index.match(request) == {"e1": 2}
    mirror.apply("e1", BlockRemoved([2]))
    assert mirror.index.match(request) == {"e1": 1}


def test_lora_blocks_only_match_requests_for_that_adapter() -> None:
    mirror = KvEventMirror(PrefixIndex())
    mirror.apply("e1", _stored([7, 8], None, TOKENS[:32], lora="sql"))
    assert mirror.index.match(hash_token_blocks(TOKENS[:32], 16)) == {}
    assert mirror.index.match(hash_token_blocks(TOKENS[:32], 16, extra_key="sql")) == {"e1": 2}


def test_orphan_blocks_are_counted_and_left_out() -> None:
    mirror = KvEventMirror(PrefixIndex())
    mirror.apply("e1", _stored([5, 6], 12345, TOKENS[16:48]))
    assert mirror.stats.orphaned == 2
    assert mirror.index.size("e1") == 0


def test_lost_removals_cannot_grow_the_mirror_without_bound() -> None:
    mirror = KvEventMirror(PrefixIndex(default_capacity=4))
    for i in range(50):
        mirror.apply("e1", _stored([10_000 + i], None, list(range(i * 16, i * 16 + 16))))
    assert mirror.index.size("e1") == 4
    assert mirror.mapped_blocks("e1") <= 8
