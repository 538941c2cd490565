"""Prefix index: chained hashes, O(blocks) matching, the per-endpoint bound, LRU eviction."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.routing.hashing import hash_text_blocks, hash_token_blocks, root_hash
from sluice.routing.prefix_index import PrefixIndex


def test_token_chain_names_the_whole_prefix() -> None:
    a = hash_token_blocks(list(range(64)), 16)
    b = hash_token_blocks([*range(16), 99, *range(17, 64)], 16)
    assert len(a) == 4
    assert a[0] == b[0] and a[1] != b[1]
    # block 2's tokens are equal but its parent differs, so its hash differs too
    assert a[2] != b[2] and a[3] != b[3]


def test_only_full_blocks_are_hashed_and_extra_key_partitions() -> None:
    assert len(hash_token_blocks(list(range(31)), 16)) == 1
    assert hash_token_blocks(list(range(16)), 16) != hash_token_blocks(
        list(range(16)), 16, extra_key="adapter-a"
    )
    assert root_hash("x") != root_hash(None)
    text = "hello world " * 20
    assert len(hash_text_blocks(text, 64)) == len(text.encode()) // 64
    assert hash_text_blocks(text + "more", 64)[:3] == hash_text_blocks(text, 64)[:3]


def test_match_returns_leading_depth_per_endpoint() -> None:
    idx = PrefixIndex()
    long = hash_token_blocks(list(range(160)), 16)  # 10 blocks
    idx.record("a", long[:6])
    idx.record("b", long[:3])
    idx.record("c", hash_token_blocks(list(range(1000, 1160)), 16))
    assert idx.match(long) == {"a": 6, "b": 3}
    assert idx.match(long, among=["b", "c"]) == {"b": 3}
    assert idx.match([]) == {}


def test_depth_stops_at_first_missing_block_like_the_engine() -> None:
    idx = PrefixIndex()
    h = hash_token_blocks(list(range(80)), 16)
    idx.add("a", [h[0], h[1], h[3], h[4]])  # h[2] evicted by the engine
    assert idx.match(h) == {"a": 2}


def test_capacity_bounds_each_endpoint_and_evicts_chain_tails_first() -> None:
    idx = PrefixIndex(default_capacity=8)
    old = hash_token_blocks(list(range(6 * 16)), 16)
    new = hash_token_blocks(list(range(5000, 5000 + 4 * 16)), 16)
    idx.record("a", old)
    idx.record("a", new)
    assert idx.size("a") == 8
    # the old prompt lost its last two blocks, not its head
    assert idx.match(old) == {"a": 4}
    assert idx.match(new) == {"a": 4}
    idx.set_capacity("a", 3)
    assert idx.size("a") == 3
    stats = idx.stats()
    assert stats.blocks == 3 and stats.evictions == 7 and stats.capacity == 3


def test_reused_blocks_are_refreshed_not_duplicated() -> None:
    idx = PrefixIndex(default_capacity=4)
    shared = hash_token_blocks(list(range(32)), 16)
    idx.record("a", shared)
    idx.record("a", hash_token_blocks(list(range(900, 932)), 16))
    idx.record("a", shared)  # touch: now most recent
    idx.record("a", hash_token_blocks(list(range(700, 732)), 16))
    assert idx.match(shared) == {"a": 2}
    assert idx.size("a") == 4


def test_remove_endpoint_frees_its_slot_and_entries() -> None:
    idx = PrefixIndex()
    h = hash_token_blocks(list(range(48)), 16)
    idx.record("a", h)
    idx.record("b", h)
    idx.remove_endpoint("a")
    assert idx.match(h) == {"b": 3}
    idx.record("c", h[:1])  # reuses a's slot
    assert idx.match(h) == {"b": 3, "c": 1}
    assert idx.stats().unique_blocks == 3


def test_hit_statistics() -> None:
    idx = PrefixIndex()
    h = hash_token_blocks(list(range(64)), 16)
    idx.record("a", h[:2])
    idx.match(h)
    stats = idx.stats()
    assert stats.lookups == 1 and stats.lookup_blocks == 4 and stats.hit_blocks == 2
    assert stats.hit_rate == 0.5


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 30), st.integers(1, 12)),
        max_size=40,
    ),
    cap=st.integers(1, 20),
)
def test_index_never_exceeds_its_bound_and_agrees_with_a_naive_model(
    ops: list[tuple[str, int, int]], cap: int
) -> None:
    idx = PrefixIndex(default_capacity=cap)
    naive: dict[str, list[int]] = {"a": [], "b": [], "c": []}  # LRU order, oldest first
    probe: list[int] = []
    for endpoint, start, n in ops:
        hashes = hash_token_blocks(list(range(start, start + 4 * n)), 4)
        probe = hashes
        idx.record(endpoint, hashes)
        lru = naive[endpoint]
        for h in reversed(hashes):
            if h in lru:
                lru.remove(h)
            lru.append(h)
        del lru[: max(0, len(lru) - cap)]
        assert idx.size(endpoint) == len(lru) <= cap
    expected = {}
    for endpoint, lru in naive.items():
        held = set(lru)
        depth = 0
        while depth < len(probe) and probe[depth] in held:
            depth += 1
        if depth:
            expected[endpoint] = depth
    assert idx.match(probe) == expected


class _CountingDict(dict):
    gets = 0

    def get(self, key, default=None):  # type: ignore[override]
        _CountingDict.gets += 1
        return super().get(key, default)


def test_lookup_cost_is_per_prompt_block_not_per_endpoint_and_block() -> None:
    for endpoints in (2, 64):
        idx = PrefixIndex()
        prompt = hash_token_blocks(list(range(16 * 100)), 16)
        for e in range(endpoints):
            idx.record(f"e{e}", prompt[: 50 + e % 50])
        counting = _CountingDict(idx._holders)
        idx._holders = counting
        _CountingDict.gets = 0
        depths = idx.match(prompt)
        assert len(depths) == endpoints
        assert _CountingDict.gets <= len(prompt)  # one lookup per block, whatever the fleet


def test_free_queue_model_pins_in_flight_prompts_and_bounds_idle_ones() -> None:
    idx = PrefixIndex(default_capacity=100)
    a = hash_token_blocks(list(range(6 * 16)), 16)
    b = hash_token_blocks(list(range(7000, 7000 + 4 * 16)), 16)
    idx.pin("e", a)
    idx.pin("e", b)
    idx.set_idle_capacity("e", 0)  # the engine's KV is full of running requests
    assert idx.pinned("e") == 10 and idx.match(a) == {"e": 6}  # in flight: still shared
    idx.unpin("e", a)  # its request ended: the engine's free pool grew by its blocks
    assert idx.match(a) == {"e": 6} and idx.pinned("e") == 4
    idx.set_idle_capacity("e", 0)  # then new requests took every free block
    assert idx.match(a) == {} and idx.size("e") == 4
    idx.unpin("e", b)
    idx.set_idle_capacity("e", 3)
    # released tail first, as the engine's free queue: the head survives
    assert idx.match(b) == {"e": 3} and idx.pinned("e") == 0
    idx.pin("e", b[:2])  # a hit takes the blocks back out of the free queue
    idx.set_idle_capacity("e", 0)
    assert idx.match(b) == {"e": 2}


def test_generated_blocks_take_idle_room_and_are_evicted_before_the_prompt() -> None:
    """The engine frees a request's output blocks with its prompt's (output tail first): the
    index holds placeholders for them, so an idle conversation is as large as on the engine."""
    idx = PrefixIndex(default_capacity=100)
    a = hash_token_blocks(list(range(10 * 16)), 16)
    idx.pin("e", a)
    idx.set_idle_capacity("e", 0)
    idx.unpin("e", a, generated_blocks=5)
    assert idx.size("e") == 15 and idx.idle_capacity("e") == 15  # the free pool grew by 15
    idx.set_idle_capacity("e", 12)  # others took 3 free blocks: the output's go first
    assert idx.match(a) == {"e": 10} and idx.size("e") == 12
    idx.set_idle_capacity("e", 8)  # 4 more: the last 2 generated, then the prompt's tail
    assert idx.match(a) == {"e": 8} and idx.size("e") == 8
    idx.unpin("e", [], generated_blocks=200)  # a later request's output is more recent:
    assert idx.size("e") == 100 and idx.match(a) == {}  # the idle conversation goes first
    idx.clear("e")
    assert idx.size("e") == 0 and idx.stats().unique_blocks == 0


def test_a_block_shared_by_two_requests_stays_pinned_until_both_end() -> None:
    idx = PrefixIndex()
    system = hash_token_blocks(list(range(32)), 16)
    idx.pin("e", system)
    idx.pin("e", system)
    idx.set_idle_capacity("e", 0)
    idx.unpin("e", system)
    idx.set_idle_capacity("e", 0)
    assert idx.match(system) == {"e": 2} and idx.pinned("e") == 2
    idx.unpin("e", system)
    assert idx.pinned("e") == 0 and idx.match(system) == {"e": 2}
    idx.set_idle_capacity("e", 0)
    assert idx.match(system) == {} and idx.size("e") == 0
    idx.unpin("e", system)  # a stray release is harmless
    assert idx.size("e") == 0


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["pin", "unpin", "free"]), st.integers(0, 20), st.integers(1, 6)),
        max_size=60,
    ),
    cap=st.integers(1, 30),
)
@settings(max_examples=200)
def test_free_queue_model_agrees_with_a_naive_engine_pool(
    ops: list[tuple[str, int, int]], cap: int
) -> None:
    """The index against a list model of vLLM's pool: held blocks by reference count, idle
    ones in LRU order, the idle ones bounded by the free blocks and all of them by capacity."""
    idx = PrefixIndex(default_capacity=cap)
    refs: dict[int, int] = {}
    lru: list[int] = []
    free: int | None = None
    flight: list[list[int]] = []

    def trim() -> None:
        over = len(lru) + len(refs) - cap
        if free is not None:
            over = max(over, len(lru) - free)
        del lru[: max(0, min(over, len(lru)))]

    for op, start, n in ops:
        if op == "pin":
            hashes = hash_token_blocks(list(range(start, start + 4 * n)), 4)
            idx.pin("e", hashes)
            flight.append(hashes)
            for h in hashes:
                if h in lru:
                    lru.remove(h)
                refs[h] = refs.get(h, 0) + 1
        elif op == "unpin" and flight:
            hashes = flight.pop(start % len(flight))
            generated = start % 3  # blocks its output filled: idle room, evicted first
            idx.unpin("e", hashes, generated)
            lru.extend(object() for _ in range(generated))
            if free is not None:
                free += generated
            for h in reversed(hashes):
                refs[h] -= 1
                if not refs[h]:
                    del refs[h]
                    lru.append(h)
                    if free is not None:
                        free += 1
        elif op == "free":
            free = start
            idx.set_idle_capacity("e", free)
        trim()
        assert idx.size("e") == len(lru) + len(refs)
        assert idx.pinned("e") == len(refs)
        held = set(lru) | set(refs)
        for hashes in flight:
            assert idx.match(hashes) == {"e": len(hashes)}
        probe = hash_token_blocks(list(range(start, start + 4 * n)), 4)
        depth = 0
        while depth < len(probe) and probe[depth] in held:
            depth += 1
        assert idx.match(probe) == ({"e": depth} if depth else {})
