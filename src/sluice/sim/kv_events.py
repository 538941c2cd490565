"""KV-cache events, as vLLM publishes them: what a precise prefix router mirrors.

Pure data. The engine hands batches of these to its ``kv_event_sink`` after every step; the ZMQ
publisher (``kv_publisher.py``) encodes them on vLLM's wire format. Hashes are 64-bit unsigned.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Blocks became full and cacheable; ``parent_block_hash`` is None for a chain's first block."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_name: str | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Cached blocks were evicted (lazily, when their memory was reused)."""

    block_hashes: list[int]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The whole prefix cache was reset."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared
