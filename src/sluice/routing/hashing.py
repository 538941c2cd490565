"""Chained block hashes of a prompt: the keys of the prefix index.

A prompt is cut into fixed-size blocks and block *i* is hashed together with the hash of block
*i-1*, so one hash names a whole prefix, as in vLLM's automatic prefix caching. Two units:

* token blocks (``hash_token_blocks``): the engine's block size in token ids, used when a
  tokenizer is configured and by the KV-event mirror, which rebuilds the same chain from the
  ``token_ids`` of each ``BlockStored`` event;
* text blocks (``hash_text_blocks``): fixed-size slices of the UTF-8 prompt, used when there is
  no tokenizer (about 4 bytes per token, so 64 bytes stand for one 16-token block).

Only full blocks are hashed: the engine caches only full blocks too. A LoRA adapter (or any other
cache-partitioning key) seeds the chain's root, so the same text under another adapter never
matches. blake2b rather than ``hash()``: Python's string hash changes from process to process.
"""

from __future__ import annotations

import functools
import hashlib
from array import array
from collections.abc import Sequence

# Bytes of prompt text per approximate block: 16 tokens at ~4 bytes per token.
DEFAULT_TEXT_BLOCK_BYTES = 64
APPROX_BYTES_PER_TOKEN = 4

_MASK64 = (1 << 64) - 1
_BLAKE2B_64 = hashlib.blake2b(digest_size=8)  # an empty state, copied per block


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=1024)  # one per LoRA name in practice; computed once each
def root_hash(extra_key: str | None = None) -> int:
    """The parent of a chain's first block; ``extra_key`` partitions the cache (LoRA name)."""
    return _h64(b"sluice-root\x00" + (extra_key or "").encode())


def chain_block(parent: int, block: bytes) -> int:
    """Hash of one block given its parent's hash."""
    return _h64((parent & _MASK64).to_bytes(8, "big") + block)


def token_block_bytes(tokens: Sequence[int]) -> bytes:
    """Canonical bytes of token ids (unsigned 32-bit, little-endian)."""
    packed = array("I", tokens)
    if packed.itemsize != 4:  # pragma: no cover - 'I' is 4 bytes on every supported platform
        packed = array("L", tokens)
    return packed.tobytes()


def hash_token_blocks(
    token_ids: Sequence[int],
    block_size: int,
    extra_key: str | None = None,
    parent: int | None = None,
) -> list[int]:
    """Chained hashes of every full ``block_size``-token block of ``token_ids``."""
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    data = token_block_bytes(token_ids)
    return _chain(data, block_size * 4, root_hash(extra_key) if parent is None else parent)


def hash_text_blocks(
    text: str, block_bytes: int = DEFAULT_TEXT_BLOCK_BYTES, extra_key: str | None = None
) -> list[int]:
    """Chained hashes of every full ``block_bytes``-byte slice of the UTF-8 ``text``."""
    if block_bytes <= 0:
        raise ValueError("block_bytes must be positive")
    data = text.encode("utf-8", "surrogatepass")
    return _chain(data, block_bytes, root_hash(extra_key))


def _chain(data: bytes, step: int, h: int) -> list[int]:
    """``chain_block`` over every full ``step``-byte slice of ``data``, inlined: it runs once
    per request on the gateway's hot path."""
    # Copying an empty 8-byte blake2b state is ~35% cheaper than constructing one per block,
    # and hashes exactly the same bytes (same values as ``chain_block``).
    fresh = _BLAKE2B_64.copy
    from_bytes = int.from_bytes
    out: list[int] = []
    for start in range(0, len(data) // step * step, step):
        hasher = fresh()
        hasher.update((h & _MASK64).to_bytes(8, "big") + data[start : start + step])
        h = from_bytes(hasher.digest(), "big")
        out.append(h)
    return out
