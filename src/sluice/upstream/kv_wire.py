"""vLLM's KV-cache event wire format: encode (for the simulator) and decode (for subscribers).

vLLM publishes KV events on a ZMQ PUB socket as multipart messages
``[topic, seq (8 bytes, big-endian, from 0), msgpack(EventBatch)]``. The payload comes in two
msgspec encodings and a subscriber must accept both:

* legacy, array-like tagged structs: the batch is ``[ts, [events...], data_parallel_rank]`` and
  each event ``[tag, field, ...]`` with the class name as tag and fields in declaration order;
* map format (newer vLLM): the batch is ``{"ts", "events", "data_parallel_rank"}`` and each event
  a map keyed by field name with the class name under ``"type"``.

Newer vLLM versions append fields (``extra_keys``, ``group_idx``, ...) and older ones lack
``medium``/``lora_name``; the decoder reads what is there and ignores the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

# A block hash as sent: an int (vLLM's default, the digest's last 8 bytes) or the raw digest.
WireHash = int | bytes


class BlockStored(msgspec.Struct, frozen=True):
    """Blocks became full and cached; ``token_ids`` holds every token of every stored block."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = "GPU"
    lora_name: str | None = None


class BlockRemoved(msgspec.Struct, frozen=True):
    """Blocks were evicted from the prefix cache."""

    block_hashes: list[int]
    medium: str | None = "GPU"


class AllBlocksCleared(msgspec.Struct, frozen=True):
    """The whole prefix cache was reset."""


KVWireEvent = BlockStored | BlockRemoved | AllBlocksCleared

_FIELDS: dict[str, tuple[str, ...]] = {
    "BlockStored": BlockStored.__struct_fields__,
    "BlockRemoved": BlockRemoved.__struct_fields__,
    "AllBlocksCleared": (),
}
_CLASSES: dict[str, type[KVWireEvent]] = {
    "BlockStored": BlockStored,
    "BlockRemoved": BlockRemoved,
    "AllBlocksCleared": AllBlocksCleared,
}

_encoder = msgspec.msgpack.Encoder()


class KVWireError(ValueError):
    """A payload that is not a vLLM KV event batch."""


def hash_to_int(value: WireHash) -> int:
    """Normalise a wire hash to vLLM's int form: the digest's last 8 bytes, big-endian."""
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value[-8:], "big")
    return int(value)


def seq_bytes(seq: int) -> bytes:
    return seq.to_bytes(8, "big", signed=True)


def encode_event_batch(
    events: Sequence[KVWireEvent], ts: float, data_parallel_rank: int = 0, map_format: bool = False
) -> bytes:
    """msgpack bytes of one EventBatch, in the legacy array format or the newer map format."""
    if map_format:
        body: Any = {
            "ts": ts,
            "events": [_event_as_map(e) for e in events],
            "data_parallel_rank": data_parallel_rank,
        }
    else:
        body = [ts, [_event_as_array(e) for e in events], data_parallel_rank]
    return _encoder.encode(body)


def _event_as_array(event: KVWireEvent) -> list[Any]:
    name = type(event).__name__
    return [name, *(getattr(event, f) for f in _FIELDS[name])]


def _event_as_map(event: KVWireEvent) -> dict[str, Any]:
    name = type(event).__name__
    return {"type": name, **{f: getattr(event, f) for f in _FIELDS[name]}}


def decode_event_batch(payload: bytes) -> list[KVWireEvent]:
    """Events of one EventBatch payload (either format). Hashes come back as ints.

    Unknown event types are skipped (a newer engine may publish kinds this code does not know);
    a payload that is not an event batch at all raises ``KVWireError``.
    """
    try:
        batch = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        raise KVWireError(f"not msgpack: {exc}") from exc
    if isinstance(batch, list) and len(batch) >= 2 and isinstance(batch[1], list):
        raw_events: Iterable[Any] = batch[1]
    elif isinstance(batch, dict) and isinstance(batch.get("events"), list):
        raw_events = batch["events"]
    else:
        raise KVWireError("payload is not an EventBatch ([ts, events, rank] or a map)")
    decoded = []
    for raw in raw_events:
        event = _decode_event(raw)
        if event is not None:
            decoded.append(event)
    return decoded


def decode_multipart(frames: Sequence[bytes]) -> tuple[bytes, int, list[KVWireEvent]]:
    """``(topic, seq, events)`` of one ZMQ multipart message as vLLM sends it."""
    if len(frames) != 3:
        raise KVWireError(f"expected 3 frames [topic, seq, payload], got {len(frames)}")
    topic, seq, payload = frames
    if len(seq) != 8:
        raise KVWireError("sequence frame must be 8 bytes")
    return bytes(topic), int.from_bytes(seq, "big", signed=True), decode_event_batch(payload)


def _decode_event(raw: Any) -> KVWireEvent | None:
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        name = raw[0]
        values = dict(zip(_FIELDS.get(name, ()), raw[1:], strict=False))
    elif isinstance(raw, dict) and isinstance(raw.get("type"), str):
        name = raw["type"]
        values = {f: raw[f] for f in _FIELDS.get(name, ()) if f in raw}
    else:
        raise KVWireError(f"malformed event: {raw!r:.80}")
    cls = _CLASSES.get(name)
    if cls is None:
        return None
    if "block_hashes" in values:
        values["block_hashes"] = [hash_to_int(h) for h in values["block_hashes"]]
    if values.get("parent_block_hash") is not None:
        values["parent_block_hash"] = hash_to_int(values["parent_block_hash"])
    try:
        return cls(**values)
    except TypeError as exc:
        raise KVWireError(f"{name} is missing fields: {exc}") from exc
