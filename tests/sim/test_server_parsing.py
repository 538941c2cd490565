"""Request parsing: whatever JSON arrives, the answer is a parsed request or a 400, no crash."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.sim.openai_format import APIError, ChunkEncoder, parse_generation_request

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)  # fmt: skip

# Bodies that look like real requests, with any value in any known field.
fields = st.sampled_from(
    ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "min_tokens", "stream",
     "stream_options", "n", "stop", "ignore_eos", "priority", "seed", "temperature"]
)  # fmt: skip
bodies = st.dictionaries(fields, json_values, max_size=8) | json_values


@settings(max_examples=300, deadline=None)
@given(body=bodies, kind=st.sampled_from(["chat", "completion"]))
def test_any_json_parses_or_is_a_400(body: object, kind: str) -> None:
    try:
        request = parse_generation_request(orjson.dumps(body), kind)  # type: ignore[arg-type]
    except APIError as exc:
        assert exc.status == 400
        error = orjson.loads(exc.body())["error"]
        assert error["code"] == 400 and error["type"] == "BadRequestError" and error["message"]
        return
    assert request.max_tokens is None or request.max_tokens >= 1
    assert request.min_tokens >= 0
    if kind == "chat":
        assert request.messages
    else:
        assert request.prompt_text or request.prompt_token_ids


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "Invalid JSON"),
        (b'{"messages": []}', "non-empty list"),
        (b'{"messages": [{"content": "x"}]}', "string 'role'"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "content"),
        (b'{"messages": [{"role": "user"}], "max_tokens": 0}', "at least 1"),
        (b'{"messages": [{"role": "user"}], "max_tokens": 4, "min_tokens": 5}', "min_tokens"),
        (b'{"messages": [{"role": "user"}], "stop": [1]}', "stop"),
        (b'{"messages": [{"role": "user"}], "stream": "yes"}', "boolean"),
        (b'{"messages": [{"role": "user"}], "temperature": "hot"}', "number"),
    ],
)
def test_messages_name_the_problem(body: bytes, fragment: str) -> None:
    with pytest.raises(APIError) as info:
        parse_generation_request(body, "chat")
    assert fragment in info.value.message


def test_chat_content_parts_and_defaults() -> None:
    body = {
        "messages": [
            {"role": "system", "content": None},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]},
        ],
        "stop": "END",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = parse_generation_request(orjson.dumps(body), "chat")
    assert request.messages == [
        {"role": "system", "content": ""},
        {"role": "user", "content": "a"},
    ]
    assert request.max_tokens is None  # chat: up to the context, as vLLM
    assert request.stop == ["END"] and request.include_usage
    completion = parse_generation_request(b'{"prompt": ["one"]}', "completion")
    assert completion.prompt_text == "one" and completion.max_tokens == 16


def test_chunks_are_valid_json_whatever_the_text() -> None:
    encoder = ChunkEncoder("chat", "chatcmpl-1", 'model "quoted"\n')
    for text in ['"', "\\", "\n\t", "\u2028", "emoji \U0001f600", ""]:
        for chunk in (encoder.delta(text), encoder.final(text, "stop")):
            assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
            event = orjson.loads(chunk[6:])
            assert event["choices"][0]["delta"]["content"] == text
            assert event["model"] == 'model "quoted"\n'
