"""Any body at all: the parser answers with a request or an ApiError, never anything else."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.api.context import RequestContext
from sluice.api.errors import ApiError
from sluice.api.parse import CHAT_PATH, COMPLETIONS_PATH, parse_into

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    st.fixed_dictionaries(
        {},
        optional={
            "model": json_values,
            "messages": json_values,
            "prompt": json_values,
            "stream": json_values,
            "stream_options": json_values,
        },
    ).map(orjson.dumps),
)


@settings(max_examples=300, deadline=None)
@given(body=bodies, path=st.sampled_from([CHAT_PATH, COMPLETIONS_PATH]))
def test_parser_accepts_or_raises_api_error_only(body: bytes, path: str) -> None:
    ctx = RequestContext("r", path, {}, None, 0.0, 0.0)
    try:
        parse_into(ctx, body)
    except ApiError as err:
        assert err.status == 400
        assert set(orjson.loads(err.body())["error"]) == {"message", "type", "param", "code"}
        return
    assert isinstance(ctx.model, str) and ctx.model
    assert isinstance(ctx.stream, bool)
    if ctx.stream and not ctx.client_wants_usage:
        sent = orjson.loads(ctx.upstream_body())
        assert sent["stream_options"]["include_usage"] is True
        assert {k: v for k, v in sent.items() if k != "stream_options"} == {
            k: v for k, v in ctx.body.items() if k != "stream_options"
        }
