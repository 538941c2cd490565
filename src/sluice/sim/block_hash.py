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
    data = array("I", token_ids).tobytes()  # native order: little-endian on every target
    step = block_size * 4
    h = root_hash(lora_name, seed) if parent is None else parent
    out: list[int] = []
    blake2b = hashlib.blake2b
    for start in range(0, (len(token_ids) // block_size) * step, step):
        digest = blake2b(h.to_bytes(8, "big") + data[start : start + step], digest_size=8)
        h = int.from_bytes(digest.digest(), "big")
        out.append(h)
    return out
