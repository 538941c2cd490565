"""StreamTap: bytes pass through untouched; the usage chunk is read, and removed when asked."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from sluice.upstream.sse import StreamTap

USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


CONTENT = [event({"choices": [{"index": 0, "delta": {"content": t}}]}) for t in ("a", '"usage"')]
USAGE_EVENT = event({"choices": [], "usage": USAGE})
STREAM = b"".join(CONTENT) + USAGE_EVENT + b"data: [DONE]\n\n"


def run(tap: StreamTap, chunks: list[bytes]) -> bytes:
    return b"".join(tap.feed(c) for c in chunks) + tap.flush()


def test_whole_events_pass_through_as_the_same_bytes() -> None:
    tap = StreamTap(strip_usage=False)
    chunk = CONTENT[0]
    assert tap.feed(chunk) is chunk  # no copy, no re-encoding


def test_usage_chunk_is_removed_when_the_client_did_not_ask() -> None:
    tap = StreamTap(strip_usage=True)
    out = run(tap, [STREAM])
    assert out == b"".join(CONTENT) + b"data: [DONE]\n\n"
    assert tap.usage == USAGE


def test_usage_chunk_is_kept_when_the_client_asked() -> None:
    tap = StreamTap(strip_usage=False)
    assert run(tap, [STREAM]) == STREAM
    assert tap.usage == USAGE


def test_text_that_mentions_usage_is_not_mistaken_for_it() -> None:
    tap = StreamTap(strip_usage=True)
    assert run(tap, CONTENT) == b"".join(CONTENT)
    assert tap.usage is None


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_any_split_of_the_stream_gives_the_same_result(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    tap = StreamTap(strip_usage=True)
    assert run(tap, chunks) == b"".join(CONTENT) + b"data: [DONE]\n\n"
    assert tap.usage == USAGE


def test_finish_reason_and_events_are_read_from_the_bytes_in_any_split() -> None:
    role = event({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
    token = event({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]})
    final = event({"choices": [{"index": 0, "delta": {"content": "y"}, "finish_reason": "stop"}]})
    stream = role + token * 3 + final + USAGE_EVENT + b"data: [DONE]\n\n"
    for size in (1, 7, 50, len(stream)):
        tap = StreamTap(strip_usage=True)
        run(tap, [stream[i : i + size] for i in range(0, len(stream), size)])
        assert tap.finish_reason == "stop"
        assert tap.events == 7
    cut = StreamTap(strip_usage=True)
    run(cut, [role + token * 3])  # cancelled: no final chunk, no usage
    assert cut.finish_reason is None and cut.tokens_seen(chat=True) == 3
