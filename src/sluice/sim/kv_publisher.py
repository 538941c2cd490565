"""Publishes the simulated engine's KV-cache events on ZMQ, exactly as vLLM does.

One multipart message per engine step that produced events: ``[topic, seq, payload]`` with
``seq`` counting from 0 and the payload one msgpack EventBatch (see ``sluice.upstream.kv_wire``).
Sending never blocks the engine: the PUB socket is written with ``NOBLOCK`` and a batch that
meets a full send queue (high-water mark) is dropped and counted, as a PUB socket would do.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import zmq

from sluice.sim import kv_events
from sluice.upstream import kv_wire
from sluice.upstream.kv_wire import decode_event_batch, decode_multipart

__all__ = ["KVEventPublisher", "decode_event_batch", "decode_multipart", "to_wire"]


def to_wire(event: kv_events.KVEvent) -> kv_wire.KVWireEvent:
    """The engine's event as vLLM sends it (``lora_id`` None, medium ``GPU``)."""
    if isinstance(event, kv_events.BlockStored):
        return kv_wire.BlockStored(
            block_hashes=list(event.block_hashes),
            parent_block_hash=event.parent_block_hash,
            token_ids=list(event.token_ids),
            block_size=event.block_size,
            lora_id=None,
            medium="GPU",
            lora_name=event.lora_name,
        )
    if isinstance(event, kv_events.BlockRemoved):
        return kv_wire.BlockRemoved(block_hashes=list(event.block_hashes), medium="GPU")
    return kv_wire.AllBlocksCleared()


class KVEventPublisher:
    """A ZMQ PUB socket that sends one EventBatch per ``publish`` call.

    ``endpoint`` follows vLLM's rule: it binds when it contains ``*`` (``tcp://*:5557``) or a
    port 0, and connects otherwise. ``bound_endpoint`` tells the address actually bound.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        topic: str = "",
        map_format: bool = False,
        data_parallel_rank: int = 0,
        hwm: int = 100_000,
        context: zmq.Context | None = None,
    ) -> None:
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        if endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"  # ZMQ's spelling of "any free port"
        if "*" in endpoint:
            self._socket.bind(endpoint)
        else:
            self._socket.connect(endpoint)
        self.bound_endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._topic = topic.encode()
        self._map_format = map_format
        self._rank = data_parallel_rank
        self.seq = 0
        self.dropped_batches = 0

    def publish(self, events: Iterable[kv_events.KVEvent]) -> bool:
        """Send one batch; returns False when it had to be dropped (send queue full)."""
        wire = [to_wire(e) for e in events]
        if not wire:
            return True
        payload = kv_wire.encode_event_batch(wire, time.time(), self._rank, self._map_format)
        try:
            self._socket.send_multipart(
                [self._topic, kv_wire.seq_bytes(self.seq), payload], flags=zmq.NOBLOCK
            )
        except zmq.Again:
            self.dropped_batches += 1
            return False
        finally:
            # vLLM advances seq per batch it produced, so a gap tells a subscriber it lost one.
            self.seq += 1
        return True

    def close(self) -> None:
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()
