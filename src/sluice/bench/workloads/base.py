"""The common workload request and deterministic token content.

A workload is a list (or a lazy iterator) of :class:`WorkloadRequest`, ordered by ``arrival``.
Prompts are token ids; the HTTP runner renders them to text with the simulator's tokenizer, so
both the cluster simulator and an HTTP run see exactly the same tokens.

Token content is a pure function of ``(seed, key, position)`` (splitmix64), so two requests share a
prefix exactly when they share the keys of their leading blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class TokenSpace:
    """The token ids a workload may use: ``low <= id < high``.

    The default is the simulator word tokenizer's multi-syllable word ids (80 to 127,999): no
    special tokens, and ``encode(decode(ids)) == ids``, so rendered text has the exact length.
    """

    low: int = 80
    high: int = 128000

    @property
    def size(self) -> int:
        return self.high - self.low


DEFAULT_SPACE = TokenSpace()


@dataclass(slots=True)
class WorkloadRequest:
    """One request of a workload.

    ``arrival`` is in seconds from the start of the run. A request with ``depends_on`` is sent
    ``think_time`` seconds after that request finished (and not before ``arrival``): the next turn
    of a conversation.
    """

    request_id: str
    arrival: float
    prompt: Sequence[int]
    max_tokens: int
    session_id: str | None = None
    depends_on: str | None = None
    think_time: float = 0.0
    block_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def content_key(*parts: object) -> int:
    """A stable 63-bit key for the content named by ``parts`` (the same in every process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def block_tokens(seed: int, key: int, length: int, space: TokenSpace = DEFAULT_SPACE) -> np.ndarray:
    """``length`` deterministic token ids for the content ``key`` (a prefix of longer content)."""
    base = ((seed & 0xFFFFFFFF) * 0x100000001B3 ^ (key * 0x9E3779B97F4A7C15)) & _MASK
    positions = np.arange(length, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
    mixed = _splitmix(positions + np.uint64(base))
    return (mixed % np.uint64(space.size)).astype(np.int64) + space.low


def blocks_tokens(
    seed: int, keys: Sequence[int], length: int, space: TokenSpace = DEFAULT_SPACE
) -> np.ndarray:
    """``block_tokens`` of each key, one row per key, in one vectorised pass (same values)."""
    salt = (seed & 0xFFFFFFFF) * 0x100000001B3
    bases = np.array([(salt ^ (key * 0x9E3779B97F4A7C15)) & _MASK for key in keys], np.uint64)
    positions = np.arange(length, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
    mixed = _splitmix(positions[None, :] + bases[:, None])
    return (mixed % np.uint64(space.size)).astype(np.int64) + space.low


def tokens(seed: int, key: int, length: int, space: TokenSpace = DEFAULT_SPACE) -> list[int]:
    return block_tokens(seed, key, length, space).tolist()
