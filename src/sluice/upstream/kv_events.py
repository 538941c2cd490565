"""Subscribe to the engines' KV-cache events (vLLM's ZMQ publisher) and mirror them.

One async ZMQ SUB socket per endpoint; each message ``[topic, seq, EventBatch]`` is decoded by
``kv_wire`` and applied to the pure ``routing.kv_mirror.KvEventMirror``, which keeps the prefix
index (precise mode) in step with what each engine really caches.

Sequence numbers count batches per publisher. A gap means batches were lost (the PUB socket
drops when its queue is full, or we joined late): with a replay address (the engine's ZMQ ROUTER,
``--kv-events-config replay_endpoint``) the missing batches are asked for; without one the gap is
counted and the mirror carries on -- blocks stored under a lost parent stay out of the index
(safe: a miss), and removals of unknown blocks are ignored.

An endpoint's addresses come from its labels: ``kv_events`` (``tcp://host:5557``) and optionally
``kv_events_replay``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import zmq
import zmq.asyncio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.routing.endpoint import Endpoint
from sluice.routing.kv_mirror import KvEventMirror
from sluice.routing.prefix_index import PrefixIndex
from sluice.telemetry.logs import get_logger
from sluice.upstream.kv_wire import KVWireError, decode_event_batch, decode_multipart, seq_bytes

LABEL = "kv_events"
REPLAY_LABEL = "kv_events_replay"
# vLLM's replay answer ends with this sequence number and an empty payload.
_END_SEQ = -1


@dataclass(slots=True)
class SubscriberStats:
    batches: int = 0
    events: int = 0
    gaps: int = 0
    replayed: int = 0
    decode_errors: int = 0


@dataclass(frozen=True, slots=True)
class KvSource:
    endpoint_id: str
    address: str
    replay: str | None = None
    topic: str = ""


def sources_from_endpoints(endpoints: Iterable[Endpoint]) -> list[KvSource]:
    return [
        KvSource(e.id, e.labels[LABEL], e.labels.get(REPLAY_LABEL))
        for e in endpoints
        if e.labels.get(LABEL)
    ]


class KvEventSubscriber:
    def __init__(
        self,
        mirror: KvEventMirror,
        sources: Iterable[KvSource],
        *,
        context: zmq.asyncio.Context | None = None,
        replay_timeout_s: float = 2.0,
    ) -> None:
        self.mirror = mirror
        self.sources = list(sources)
        self.stats = SubscriberStats()
        self.replay_timeout_s = replay_timeout_s
        self._context = context or zmq.asyncio.Context.instance()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_seq: dict[str, int] = {}
        self._subscribed: dict[str, asyncio.Event] = {}
        self.log = get_logger("sluice.kv_events")

    def start(self) -> None:
        for source in self.sources:
            self._subscribed[source.endpoint_id] = asyncio.Event()
            self._tasks.append(
                asyncio.create_task(self._follow(source), name=f"kv-events-{source.endpoint_id}")
            )

    async def wait_connected(self, timeout: float = 5.0) -> None:
        """Until every SUB socket is connected (ZMQ still drops what is sent before it joins)."""
        await asyncio.wait_for(
            asyncio.gather(*(e.wait() for e in self._subscribed.values())), timeout
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _follow(self, source: KvSource) -> None:
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, source.topic.encode())
        sock.connect(source.address)
        self._subscribed[source.endpoint_id].set()
        try:
            while True:
                frames = await sock.recv_multipart()
                await self._on_message(source, frames)
        finally:
            sock.close(linger=0)

    async def _on_message(self, source: KvSource, frames: list[bytes]) -> None:
        try:
            _, seq, events = decode_multipart(frames)
        except KVWireError as exc:
            self.stats.decode_errors += 1
            self.log.warning("kv_event_decode_error", endpoint=source.endpoint_id, error=str(exc))
            return
        last = self._last_seq.get(source.endpoint_id)
        if last is not None and seq > last + 1:
            self.stats.gaps += 1
            self.log.warning(
                "kv_event_gap", endpoint=source.endpoint_id, expected=last + 1, got=seq
            )
            if source.replay:
                await self._replay(source, last + 1, seq)
        if last is not None and seq <= last:
            return  # already applied (a replay overlapped the live stream)
        self._apply(source.endpoint_id, seq, events)

    def _apply(self, endpoint_id: str, seq: int, events: list) -> None:
        self._last_seq[endpoint_id] = seq
        self.stats.batches += 1
        self.stats.events += len(events)
        self.mirror.apply_all(endpoint_id, events)

    async def _replay(self, source: KvSource, start: int, stop: int) -> None:
        """Ask the engine's ROUTER socket for batches ``start`` .. ``stop - 1``."""
        assert source.replay is not None
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(source.replay)
        try:
            await sock.send_multipart([b"", seq_bytes(start)])
            while True:
                frames = await asyncio.wait_for(sock.recv_multipart(), self.replay_timeout_s)
                seq_frame, payload = frames[-2], frames[-1]
                seq = int.from_bytes(seq_frame, "big", signed=True)
                if seq == _END_SEQ or seq >= stop:
                    break
                try:
                    events = decode_event_batch(payload)
                except KVWireError:
                    self.stats.decode_errors += 1
                    continue
                self._apply(source.endpoint_id, seq, events)
                self.stats.replayed += 1
        except TimeoutError:
            self.log.warning("kv_event_replay_timeout", endpoint=source.endpoint_id)
        finally:
            sock.close(linger=0)


class PrefixIndexCollector(Collector):
    """Prometheus view of the prefix index (size, bound, hits) and of the KV-event mirror,
    read at scrape time so the request path pays nothing."""

    def __init__(
        self,
        index: PrefixIndex,
        mirror: KvEventMirror | None = None,
        subscriber: KvEventSubscriber | None = None,
    ) -> None:
        self.index = index
        self.mirror = mirror
        self.subscriber = subscriber

    def collect(self) -> Iterator[Metric]:
        stats = self.index.stats()
        size = GaugeMetricFamily(
            "sluice_prefix_index_blocks", "Cached blocks the index records.", labels=["endpoint"]
        )
        bound = GaugeMetricFamily(
            "sluice_prefix_index_capacity_blocks",
            "The index's bound per endpoint (the engine's KV blocks).",
            labels=["endpoint"],
        )
        pinned = GaugeMetricFamily(
            "sluice_prefix_index_pinned_blocks",
            "Blocks of requests in flight, which the engine cannot evict (free-queue model).",
            labels=["endpoint"],
        )
        for endpoint_id, (blocks, capacity) in stats.per_endpoint.items():
            size.add_metric([endpoint_id], float(blocks))
            bound.add_metric([endpoint_id], float(capacity))
            pinned.add_metric([endpoint_id], float(stats.pinned.get(endpoint_id, 0)))
        yield size
        yield bound
        yield pinned
        unique = GaugeMetricFamily("sluice_prefix_index_unique_blocks", "Distinct block hashes.")
        unique.add_metric([], float(stats.unique_blocks))
        yield unique
        counters = (
            ("sluice_prefix_index_lookups", "Index lookups.", stats.lookups),
            ("sluice_prefix_index_lookup_blocks", "Prompt blocks looked up.", stats.lookup_blocks),
            ("sluice_prefix_index_hit_blocks", "Blocks matched on the best.", stats.hit_blocks),
            ("sluice_prefix_index_evictions", "Blocks evicted by the bound.", stats.evictions),
        )
        for name, doc, value in counters:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(value))
            yield family
        if self.mirror is not None:
            m = self.mirror.stats
            events = CounterMetricFamily(
                "sluice_kv_events_blocks", "Blocks in KV events applied.", labels=["kind"]
            )
            for kind, value in (
                ("stored", m.stored),
                ("removed", m.removed),
                ("orphaned", m.orphaned),
            ):
                events.add_metric([kind], float(value))
            yield events
            resets = CounterMetricFamily(
                "sluice_kv_events_cache_resets", "AllBlocksCleared (or a forced clear) applied."
            )
            resets.add_metric([], float(m.cleared))
            yield resets
        if self.subscriber is not None:
            s = self.subscriber.stats
            gaps = CounterMetricFamily("sluice_kv_events_gaps", "Sequence gaps in KV events.")
            gaps.add_metric([], float(s.gaps))
            yield gaps
