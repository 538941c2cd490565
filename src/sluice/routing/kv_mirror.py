"""Precise mode: mirror the engines' KV-cache events into the prefix index.

vLLM names blocks by its own hashes (SHA-256 with a per-process seed by default), which the
gateway cannot compute from a prompt. So, as llm-d's indexer does, each ``BlockStored`` is
re-hashed with our own chain (``routing.hashing``) from its ``token_ids`` and the already mapped
parent, and an engine-hash -> our-hash map turns later ``BlockRemoved`` events back into our keys.
A request whose prompt was tokenized with the same tokenizer then hashes to the same keys.

Pure: the ZMQ subscriber (``sluice.upstream.kv_events``) decodes the wire and calls ``apply``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice.routing.hashing import chain_block, root_hash, token_block_bytes
from sluice.routing.prefix_index import PrefixIndex


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: Sequence[int]
    parent_block_hash: int | None
    token_ids: Sequence[int]
    block_size: int
    lora_name: str | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: Sequence[int]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(slots=True)
class MirrorStats:
    stored: int = 0
    removed: int = 0
    cleared: int = 0
    # Blocks whose parent we never saw (events lost or the subscriber joined late): they cannot
    # be re-hashed, so they stay out of the index; prompts through them miss, which is safe.
    orphaned: int = 0


@dataclass(slots=True)
class _EndpointMap:
    # engine hash -> [our hash, how many engine blocks carry it]
    engine: dict[int, list[int]] = field(default_factory=dict)
    # our hash -> how many distinct engine hashes map to it (the engine may add keys we ignore)
    ours: dict[int, int] = field(default_factory=dict)


class KvEventMirror:
    """Applies one endpoint's KV events to a ``PrefixIndex`` keyed by our own chain."""

    def __init__(self, index: PrefixIndex) -> None:
        self.index = index
        self.stats = MirrorStats()
        self._maps: dict[str, _EndpointMap] = {}

    def apply(self, endpoint_id: str, event: KvEvent | Any) -> None:
        """Apply one event: these classes, or any with the same name and fields (the wire
        decoder's and the simulator's), so no layer needs to convert."""
        kind = type(event).__name__
        if kind == "BlockStored":
            self._stored(endpoint_id, event)
        elif kind == "BlockRemoved":
            self._removed(endpoint_id, event.block_hashes)
        elif kind == "AllBlocksCleared":
            self.clear(endpoint_id)

    def apply_all(self, endpoint_id: str, events: Iterable[KvEvent | Any]) -> None:
        for event in events:
            self.apply(endpoint_id, event)

    def clear(self, endpoint_id: str) -> None:
        """Forget everything about one endpoint (cache reset, or a gap in the event stream)."""
        self.stats.cleared += 1
        self._maps.pop(endpoint_id, None)
        self.index.clear(endpoint_id)

    def mapped_blocks(self, endpoint_id: str) -> int:
        m = self._maps.get(endpoint_id)
        return 0 if m is None else len(m.engine)

    def _stored(self, endpoint_id: str, ev: BlockStored | Any) -> None:
        m = self._maps.setdefault(endpoint_id, _EndpointMap())
        if ev.parent_block_hash is None:
            parent = root_hash(ev.lora_name)
        else:
            entry = m.engine.get(ev.parent_block_hash)
            if entry is None:
                self.stats.orphaned += len(ev.block_hashes)
                return
            parent = entry[0]
        bs = ev.block_size
        added: list[int] = []
        for i, engine_hash in enumerate(ev.block_hashes):
            ours = chain_block(parent, token_block_bytes(ev.token_ids[i * bs : (i + 1) * bs]))
            entry = m.engine.get(engine_hash)
            if entry is None:
                m.engine[engine_hash] = [ours, 1]
                m.ours[ours] = m.ours.get(ours, 0) + 1
                added.append(ours)
            else:
                entry[1] += 1  # the engine does not de-duplicate identical blocks
            parent = ours
        self.stats.stored += len(ev.block_hashes)
        self.index.add(endpoint_id, added)
        self._bound(endpoint_id, m)

    def _removed(self, endpoint_id: str, engine_hashes: Sequence[int]) -> None:
        m = self._maps.get(endpoint_id)
        if m is None:
            return
        gone: list[int] = []
        for engine_hash in engine_hashes:
            entry = m.engine.get(engine_hash)
            if entry is None:
                continue
            entry[1] -= 1
            if entry[1] > 0:
                continue
            del m.engine[engine_hash]
            ours = entry[0]
            left = m.ours.get(ours, 1) - 1
            if left > 0:
                m.ours[ours] = left
            else:
                m.ours.pop(ours, None)
                gone.append(ours)
            self.stats.removed += 1
        self.index.discard(endpoint_id, gone)

    def _bound(self, endpoint_id: str, m: _EndpointMap) -> None:
        # Lost BlockRemoved events would let the engine-hash map grow forever; the engine cannot
        # hold more blocks than the index capacity, so anything beyond twice that is stale.
        limit = 2 * self.index.capacity(endpoint_id)
        while len(m.engine) > limit:
            engine_hash = next(iter(m.engine))
            entry = m.engine.pop(engine_hash)
            left = m.ours.get(entry[0], 1) - 1
            if left > 0:
                m.ours[entry[0]] = left
            else:
                m.ours.pop(entry[0], None)
                self.index.discard(endpoint_id, (entry[0],))
