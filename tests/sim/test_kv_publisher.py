"""KV events: vLLM's wire format, and a mirror fed from a real ZMQ SUB socket that ends up equal
to the engine's block pool."""

from __future__ import annotations

import asyncio

import httpx
import msgspec
import openai
import pytest
import zmq
import zmq.asyncio

from sluice.sim import kv_events
from sluice.sim.kv_publisher import KVEventPublisher, to_wire
from sluice.sim.tokenizer import text_of_length
from sluice.upstream.kv_wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVWireError,
    decode_event_batch,
    decode_multipart,
    encode_event_batch,
)

from .conftest import StartServer

EVENTS = [
    BlockStored([11, 12], None, list(range(32)), 16, None, "GPU", None),
    BlockStored([13], 12, list(range(16)), 16, None, "GPU", "sql"),
    BlockRemoved([11]),
    AllBlocksCleared(),
]


@pytest.mark.parametrize("map_format", [False, True])
def test_round_trip(map_format: bool) -> None:
    assert decode_event_batch(encode_event_batch(EVENTS, 1.5, 0, map_format)) == EVENTS


def test_legacy_layout_is_vllm_tagged_arrays() -> None:
    raw = msgspec.msgpack.decode(encode_event_batch(EVENTS[:3], 2.0, 3))
    assert raw[0] == 2.0 and raw[2] == 3
    assert raw[1][0] == ["BlockStored", [11, 12], None, list(range(32)), 16, None, "GPU", None]
    assert raw[1][2] == ["BlockRemoved", [11], "GPU"]
    mapped = msgspec.msgpack.decode(encode_event_batch(EVENTS[:1], 2.0, 0, map_format=True))
    assert mapped["events"][0]["type"] == "BlockStored"
    assert mapped["events"][0]["block_hashes"] == [11, 12]


def test_decoder_accepts_other_vllm_versions() -> None:
    digest = bytes(range(32))
    payload = msgspec.msgpack.encode(
        [
            1.0,
            [
                # Newer vLLM: extra trailing fields (extra_keys, group_idx, spec kind, window).
                ["BlockStored", [digest], None, [1] * 16, 16, None, "GPU", None, [None], 0, "x", 0],
                # Older vLLM: no medium, no lora_name.
                ["BlockStored", [5], 4, [2] * 16, 16, None],
                ["SomethingNew", 1, 2],
                {"type": "BlockRemoved", "block_hashes": [5], "medium": "GPU", "group_idx": 0},
            ],
        ]
    )
    events = decode_event_batch(payload)
    tail = int.from_bytes(digest[-8:], "big")
    assert events[0] == BlockStored([tail], None, [1] * 16, 16, None, "GPU", None)
    assert events[1] == BlockStored([5], 4, [2] * 16, 16, None, "GPU", None)
    assert events[2] == BlockRemoved([5], "GPU")
    assert len(events) == 3  # the unknown kind is skipped


def test_decoder_rejects_garbage() -> None:
    with pytest.raises(KVWireError):
        decode_event_batch(b"\xc1not msgpack")
    with pytest.raises(KVWireError):
        decode_event_batch(msgspec.msgpack.encode({"no": "events"}))
    with pytest.raises(KVWireError):
        decode_event_batch(msgspec.msgpack.encode([1.0, [42]]))
    with pytest.raises(KVWireError):
        decode_multipart([b"topic", b"\x00", b""])


def test_engine_events_map_to_vllm_fields() -> None:
    stored = to_wire(kv_events.BlockStored([1, 2], 9, list(range(32)), 16, "sql"))
    assert stored == BlockStored([1, 2], 9, list(range(32)), 16, None, "GPU", "sql")
    assert to_wire(kv_events.BlockRemoved([3])) == BlockRemoved([3], "GPU")
    assert to_wire(kv_events.AllBlocksCleared()) == AllBlocksCleared()


def test_publisher_sequence_and_topic() -> None:
    context = zmq.Context()
    publisher = KVEventPublisher("tcp://127.0.0.1:0", topic="kv@e0", context=context)
    sub = context.socket(zmq.SUB)
    try:
        sub.connect(publisher.bound_endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVTIMEO, 100)
        # Publish until the subscription has propagated (ZMQ's slow joiner).
        while True:
            publisher.publish([kv_events.AllBlocksCleared()])
            try:
                sub.recv_multipart()
                break
            except zmq.Again:
                continue
        first = publisher.seq
        publisher.publish([kv_events.BlockRemoved([7])])
        publisher.publish([])  # nothing to say: nothing sent, no sequence number used
        publisher.publish([kv_events.BlockRemoved([8])])
        received = [decode_multipart(sub.recv_multipart()) for _ in range(2)]
        assert [(t, s) for t, s, _ in received] == [(b"kv@e0", first), (b"kv@e0", first + 1)]
        assert received[1][2] == [BlockRemoved([8])]
    finally:
        sub.close(linger=0)
        publisher.close()
        context.term()


@pytest.mark.parametrize("map_format", [False, True])
async def test_subscriber_mirror_equals_the_block_pool(
    sim_server: StartServer, map_format: bool
) -> None:
    # A small pool (63 usable blocks) so that distinct prompts evict each other.
    running = await sim_server(
        num_gpu_blocks=64,
        max_model_len=1000,
        kv_events_endpoint="tcp://127.0.0.1:0",
        kv_events_map_format=map_format,
    )
    publisher = running.server.publisher
    assert publisher is not None
    context = zmq.asyncio.Context()
    sub = context.socket(zmq.SUB)
    sub.connect(publisher.bound_endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    mirror: set[int] = set()
    sequences: list[int] = []
    removed: list[int] = []

    def apply(events: list[object]) -> None:
        for event in events:
            if isinstance(event, BlockStored):
                mirror.update(event.block_hashes)
                assert len(event.token_ids) == 16 * len(event.block_hashes)
            elif isinstance(event, BlockRemoved):
                mirror.difference_update(event.block_hashes)
                removed.extend(event.block_hashes)
            else:
                mirror.clear()

    try:
        # Until the subscription is live, resets (AllBlocksCleared) are lost; stop at the first
        # one that arrives, from then on the mirror sees everything.
        while True:
            await _post(running.url + "/reset_prefix_cache")
            try:
                frames = await asyncio.wait_for(sub.recv_multipart(), 0.1)
            except TimeoutError:
                continue
            _, seq, events = decode_multipart(frames)
            sequences.append(seq)
            apply(events)
            break

        client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        # Prompt 0 keeps coming back (hits); the others push older blocks out (evictions).
        seeds = [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6]
        for start in range(0, len(seeds), 2):
            await asyncio.gather(
                *(
                    client.completions.create(
                        model=running.model,
                        prompt=text_of_length(300, seed=seed),
                        max_tokens=40,
                        extra_body={"ignore_eos": True},
                    )
                    for seed in seeds[start : start + 2]
                )
            )
        while True:
            try:
                frames = await asyncio.wait_for(sub.recv_multipart(), 0.3)
            except TimeoutError:
                break
            _, seq, events = decode_multipart(frames)
            sequences.append(seq)
            apply(events)
    finally:
        sub.close(linger=0)
        context.term()

    pool = running.server.engine.pool
    assert mirror
    assert mirror == set(pool.cached)
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    assert publisher.dropped_batches == 0
    stats = running.server.engine.stats
    assert stats.prefix_cache_hits_total > 0  # repeated prompts hit
    assert removed  # and the small pool evicted some


async def _post(url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(url)
    assert response.status_code == 200


async def test_replay_serves_missed_batches(sim_server: StartServer) -> None:
    """vLLM's replay protocol, asked the way a subscriber does: a DEALER sends ``["", start]``."""
    running = await sim_server(
        num_gpu_blocks=256,
        kv_events_endpoint="tcp://127.0.0.1:0",
        kv_events_replay_endpoint="tcp://127.0.0.1:0",
    )
    publisher = running.server.publisher
    assert publisher is not None and publisher.bound_replay_endpoint is not None
    client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    for seed in range(3):  # nobody subscribes: every batch is "missed"
        await client.completions.create(
            model=running.model, prompt=text_of_length(64, seed=seed), max_tokens=20
        )
    published = publisher.seq
    assert published >= 3
    context = zmq.asyncio.Context()
    try:
        later = await _replay(context, publisher.bound_replay_endpoint, 1)
        everything = await _replay(context, publisher.bound_replay_endpoint, 0)
    finally:
        context.term()
    assert [seq for seq, _ in later] == list(range(1, published))
    assert [seq for seq, _ in everything] == list(range(published))
    mirror: set[int] = set()
    for _, events in everything:
        for event in events:
            if isinstance(event, BlockStored):
                mirror.update(event.block_hashes)
            elif isinstance(event, BlockRemoved):
                mirror.difference_update(event.block_hashes)
    assert mirror and mirror == set(running.server.engine.pool.cached)
    async with httpx.AsyncClient() as http:
        info = (await http.get(running.url + "/get_server_info")).json()
    assert info["kv_events_replay_endpoint"] == publisher.bound_replay_endpoint
    assert info["kv_events_batches"] == published and info["kv_events_dropped_batches"] == 0


async def _replay(
    context: zmq.asyncio.Context, endpoint: str, start: int
) -> list[tuple[int, list[object]]]:
    dealer = context.socket(zmq.DEALER)
    dealer.connect(endpoint)
    replayed: list[tuple[int, list[object]]] = []
    try:
        await dealer.send_multipart([b"", start.to_bytes(8, "big", signed=True)])
        while True:
            empty, seq_frame, payload = await asyncio.wait_for(dealer.recv_multipart(), 2.0)
            assert empty == b""
            seq = int.from_bytes(seq_frame, "big", signed=True)
            if seq == -1:
                assert payload == b""
                return replayed
            replayed.append((seq, list(decode_event_batch(payload))))
    finally:
        dealer.close(linger=0)
