"""Chained hashes of full token blocks: the keys of the prefix cache.

Block *i* is hashed together with the hash of block *i-1*, so one hash names a whole prefix, as in
vLLM's automatic prefix caching (``h_i = H(h_{i-1} or ROOT, tokens_i)``). The LoRA adapter name
(vLLM's ``extra_keys``) seeds the chain's root: every block of a chain under an adapter then differs
from the base model's, which partitions the cache exactly as vLLM's per-block extra key does, at one
hash per block.

The encoding is the one ``sluice.routing.hashing.hash_token_blocks`` uses (blake2b-64 of the
parent's 8 big-endian bytes followed by the tokens as unsigned 32-bit little-endian), so a router
with the same tokenizer computes the very hashes the engine stores and publishes. ``seed`` (vLLM's
``PYTHONHASHSEED``) changes the root; seed 0 is the shared default.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Callable, Sequence
from functools import lru_cache

_MASK64 = (1 << 64) - 1
_pack_parent = struct.Struct(">Q").pack
_BLAKE2B_64 = hashlib.blake2b(digest_size=8)  # an empty state: copying it beats building one


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@lru_cache(maxsize=64)
def _token_packer(n: int) -> Callable[..., bytes]:
    # A compiled struct packs a block's ids about twice as fast as building an array.
    return struct.Struct(f"<{n}I").pack


def root_hash(lora_name: str | None = None, seed: int = 0) -> int:
    """The parent of a chain's first block (vLLM's NONE_HASH), per adapter and seed."""
    data = b"sluice-root\x00" + (lora_name or "").encode()
    if seed:
        data += b"\x00seed\x00" + str(seed).encode()
    return _h64(data)


def hash_block(parent: int, tokens: Sequence[int]) -> int:
    """Hash of one full block of token ids given its parent's hash."""
    return _h64(_pack_parent(parent & _MASK64) + _token_packer(len(tokens))(*tokens))


def hash_block_ids(parent: int, tokens: array[int]) -> int:
    """``hash_block`` for an ``array('I')`` of ids (a slice of ``Sequence.token_ids``)."""
    hasher = _BLAKE2B_64.copy()
    hasher.update(_pack_parent(parent & _MASK64) + tokens.tobytes())
    return int.from_bytes(hasher.digest(), "big")


def hash_token_blocks(
    token_ids: Sequence[int],
    block_size: int,
    lora_name: str | None = None,
    *,
    seed: int = 0,
    parent: int | None = None,
) -> list[int]:
    """Chained hashes of every full ``block_size``-token block of ``token_ids``."""
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    # Native order: little-endian on every target. An array('I') is taken as it is.
    ids = token_ids if isinstance(token_ids, array) and token_ids.typecode == "I" else None
    data = (ids if ids is not None else array("I", token_ids)).tobytes()
    step = block_size * 4
    h = root_hash(lora_name, seed) if parent is None else parent
    # Chain on the 8-byte digests themselves (a digest is its hash's big-endian bytes) and make
    # ints once at the end: one conversion per block fewer in the loop.
    digests: list[bytes] = []
    keep = digests.append
    fresh = _BLAKE2B_64.copy
    parent_bytes = (h & _MASK64).to_bytes(8, "big")
    for start in range(0, (len(token_ids) // block_size) * step, step):
        hasher = fresh()
        hasher.update(parent_bytes + data[start : start + step])
        parent_bytes = hasher.digest()
        keep(parent_bytes)
    from_bytes = int.from_bytes
    return [from_bytes(d, "big") for d in digests]
