"""Publishes the simulated engine's KV-cache events on ZMQ, exactly as vLLM does.

One multipart message per engine step that produced events: ``[topic, seq, payload]`` with
``seq`` counting from 0 and the payload one msgpack EventBatch (see ``sluice.upstream.kv_wire``).
Sending never blocks the engine: the PUB socket is written with ``NOBLOCK`` and a batch that
meets a full send queue (high-water mark) is dropped and counted, as a PUB socket would do.

With a replay endpoint, the last ``buffer_steps`` batches are kept and a ZMQ ROUTER socket
answers vLLM's replay protocol: a request ``[identity, "", start_seq]`` gets every buffered
``[identity, "", seq, payload]`` with ``seq >= start_seq``, then ``[identity, "", -1, ""]``. A
subscriber that sees a gap in the sequence numbers fetches what it missed from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable

import zmq
import zmq.asyncio

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


_END_SEQ = -1


def _bind_or_connect(sock: zmq.Socket, endpoint: str) -> str:
    """vLLM's rule: bind when the address contains ``*`` (or port 0), connect otherwise."""
    if endpoint.endswith(":0"):
        endpoint = endpoint[:-2] + ":*"  # ZMQ's spelling of "any free port"
    if "*" in endpoint:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


class KVEventPublisher:
    """A ZMQ PUB socket that sends one EventBatch per ``publish`` call.

    ``bound_endpoint`` (and ``bound_replay_endpoint``) tell the addresses actually bound. The
    replay socket is served by ``start_replay()``, a task on the running event loop.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        topic: str = "",
        map_format: bool = False,
        data_parallel_rank: int = 0,
        hwm: int = 100_000,
        replay_endpoint: str | None = None,
        buffer_steps: int = 10_000,
        context: zmq.Context | None = None,
    ) -> None:
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self.bound_endpoint: str = _bind_or_connect(self._socket, endpoint)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._replay_endpoint = replay_endpoint
        self._replay_context: zmq.asyncio.Context | None = None
        self._replay_socket: zmq.asyncio.Socket | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self.bound_replay_endpoint: str | None = None
        if replay_endpoint is not None:
            self._replay_context = zmq.asyncio.Context()
            self._replay_socket = self._replay_context.socket(zmq.ROUTER)
            self._replay_socket.setsockopt(zmq.LINGER, 0)
            self.bound_replay_endpoint = _bind_or_connect(self._replay_socket, replay_endpoint)
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
        if self._buffer.maxlen:
            self._buffer.append((self.seq, payload))
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

    def start_replay(self) -> None:
        """Serve replay requests on the running loop (no-op without a replay endpoint)."""
        if self._replay_socket is not None and self._replay_task is None:
            self._replay_task = asyncio.get_running_loop().create_task(
                self._serve_replay(self._replay_socket), name="kv-events-replay"
            )

    async def _serve_replay(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                continue  # not a replay request
            identity, start = frames[0], int.from_bytes(frames[2], "big", signed=True)
            # Snapshot: publishing may go on while this answer is being sent.
            for seq, payload in [item for item in self._buffer if item[0] >= start]:
                await sock.send_multipart([identity, b"", kv_wire.seq_bytes(seq), payload])
            await sock.send_multipart([identity, b"", kv_wire.seq_bytes(_END_SEQ), b""])

    async def aclose(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
            self._replay_task = None
        self.close()

    def close(self) -> None:
        self._socket.close(linger=0)
        if self._replay_socket is not None:
            self._replay_socket.close(linger=0)
            self._replay_socket = None
        if self._replay_context is not None:
            self._replay_context.term()
            self._replay_context = None
        if self._own_context:
            self._context.term()
