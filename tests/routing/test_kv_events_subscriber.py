"""The KV-event subscriber against the simulator's ZMQ publisher (vLLM wire format)."""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.asyncio

from sluice.routing import Endpoint
from sluice.routing.hashing import hash_token_blocks
from sluice.routing.kv_mirror import KvEventMirror
from sluice.routing.prefix_index import PrefixIndex
from sluice.sim import kv_events as sim_events
from sluice.sim.block_hash import hash_token_blocks as engine_hashes
from sluice.sim.kv_publisher import KVEventPublisher
from sluice.upstream import kv_wire
from sluice.upstream.kv_events import KvEventSubscriber, KvSource, sources_from_endpoints

TOKENS = list(range(500, 500 + 64))


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("map_format", [False, True])
async def test_sim_publisher_events_reach_the_index(map_format: bool) -> None:
    ctx = zmq.asyncio.Context()
    publisher = KVEventPublisher("tcp://127.0.0.1:0", map_format=map_format)
    mirror = KvEventMirror(PrefixIndex())
    sub = KvEventSubscriber(mirror, [KvSource("e1", publisher.bound_endpoint)], context=ctx)
    sub.start()
    try:
        await sub.wait_connected()
        hashes = engine_hashes(TOKENS, 16)
        stored = sim_events.BlockStored(hashes, None, TOKENS, 16)

        # A SUB socket misses what is sent before its subscription lands: resend until seen.
        async def publish_until_seen() -> None:
            while sub.stats.batches == 0:
                publisher.publish([stored])
                await asyncio.sleep(0.05)

        await asyncio.wait_for(publish_until_seen(), 5)
        request = hash_token_blocks(TOKENS, 16)
        await _until(lambda: mirror.index.match(request) == {"e1": 4})
        publisher.publish([sim_events.BlockRemoved(hashes[2:])])
        await _until(lambda: mirror.index.match(request) == {"e1": 2})
        publisher.publish([sim_events.AllBlocksCleared()])
        await _until(lambda: mirror.index.match(request) == {})
        assert sub.stats.gaps == 0 and sub.stats.decode_errors == 0
    finally:
        await sub.stop()
        publisher.close()
        ctx.term()


async def test_gaps_are_counted_and_replayed_from_the_router_socket() -> None:
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    router = ctx.socket(zmq.ROUTER)
    replay_port = router.bind_to_random_port("tcp://127.0.0.1")
    hashes = engine_hashes(TOKENS, 16)
    batches = {
        0: kv_wire.encode_event_batch(
            [kv_wire.BlockStored(hashes[:2], None, TOKENS[:32], 16)], 0.0
        ),
        1: kv_wire.encode_event_batch(
            [kv_wire.BlockStored(hashes[2:], hashes[1], TOKENS[32:], 16)], 0.0
        ),
        2: kv_wire.encode_event_batch([kv_wire.BlockRemoved(hashes[3:])], 0.0),
    }

    async def serve_replay() -> None:
        identity, _, start = await router.recv_multipart()
        first = int.from_bytes(start, "big", signed=True)
        for seq in range(first, 3):
            await router.send_multipart([identity, b"", kv_wire.seq_bytes(seq), batches[seq]])
        await router.send_multipart([identity, b"", kv_wire.seq_bytes(-1), b""])

    mirror = KvEventMirror(PrefixIndex())
    source = KvSource("e1", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{replay_port}")
    sub = KvEventSubscriber(mirror, [source], context=ctx)
    sub.start()
    replay = asyncio.create_task(serve_replay())
    try:
        await sub.wait_connected()

        async def send_first() -> None:
            while sub.stats.batches == 0:
                await pub.send_multipart([b"", kv_wire.seq_bytes(0), batches[0]])
                await asyncio.sleep(0.05)

        await asyncio.wait_for(send_first(), 5)
        # batch 1 is lost; batch 2 arrives and reveals the gap
        await pub.send_multipart([b"", kv_wire.seq_bytes(2), batches[2]])
        request = hash_token_blocks(TOKENS, 16)
        await _until(lambda: mirror.index.match(request) == {"e1": 3})
        assert sub.stats.gaps == 1 and sub.stats.replayed == 1
        await asyncio.wait_for(replay, 5)
    finally:
        replay.cancel()
        await sub.stop()
        pub.close(linger=0)
        router.close(linger=0)
        ctx.term()


def test_sources_come_from_endpoint_labels() -> None:
    endpoints = [
        Endpoint("a", "http://a", labels={"kv_events": "tcp://a:5557"}),
        Endpoint("b", "http://b"),
        Endpoint(
            "c", "http://c", labels={"kv_events": "tcp://c:1", "kv_events_replay": "tcp://c:2"}
        ),
    ]
    assert sources_from_endpoints(endpoints) == [
        KvSource("a", "tcp://a:5557"),
        KvSource("c", "tcp://c:1", "tcp://c:2"),
    ]
