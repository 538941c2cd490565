"""Block hashes: chained, deterministic, partitioned by adapter and seed, and the router's own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sluice.routing.hashing import hash_token_blocks as router_hash_token_blocks
from sluice.sim.block_hash import hash_block, hash_token_blocks, root_hash

tokens_st = st.lists(st.integers(0, 2**32 - 1), max_size=200)


@given(tokens_st, st.integers(1, 32))
def test_chain_of_a_prefix_is_a_prefix_of_the_chain(tokens: list[int], block_size: int) -> None:
    full = hash_token_blocks(tokens, block_size)
    assert len(full) == len(tokens) // block_size
    half = tokens[: len(tokens) // 2]
    assert hash_token_blocks(half, block_size) == full[: len(half) // block_size]


@given(tokens_st, st.integers(1, 32))
def test_incremental_hashing_matches_the_batch_function(tokens: list[int], bs: int) -> None:
    parent = root_hash()
    chain = []
    for i in range(len(tokens) // bs):
        parent = hash_block(parent, tokens[i * bs : (i + 1) * bs])
        chain.append(parent)
    assert chain == hash_token_blocks(tokens, bs)


@given(tokens_st.filter(lambda t: len(t) >= 16), st.sampled_from([4, 16]))
def test_engine_hashes_equal_the_routers(tokens: list[int], block_size: int) -> None:
    """A router with the same tokenizer predicts the engine's cache keys exactly."""
    assert hash_token_blocks(tokens, block_size, "tenant-lora") == router_hash_token_blocks(
        tokens, block_size, "tenant-lora"
    )


def test_adapter_and_seed_partition_every_block_and_values_are_64_bit() -> None:
    tokens = list(range(64))
    base = hash_token_blocks(tokens, 16)
    lora = hash_token_blocks(tokens, 16, lora_name="a")
    seeded = hash_token_blocks(tokens, 16, seed=7)
    assert not set(base) & set(lora) and not set(base) & set(seeded)
    assert all(0 <= h < 2**64 for h in base + lora + seeded)
    assert hash_token_blocks(tokens, 16) == base  # deterministic
