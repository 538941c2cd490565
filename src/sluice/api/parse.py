"""Read and validate the request body: just enough to route, never the whole OpenAI schema.

The engine validates sampling parameters itself and its 4xx passes through unchanged; the gateway
checks only what it needs (size, JSON, ``model``, the prompt field, ``stream``).
"""

from __future__ import annotations

from typing import Any

import orjson

from sluice.api.context import RequestContext
from sluice.api.errors import ApiError

Receive = Any  # ASGI receive callable

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
# Which field carries the prompt, per route.
_PROMPT_FIELD = {CHAT_PATH: "messages", COMPLETIONS_PATH: "prompt"}


async def read_body(headers: dict[bytes, bytes], receive: Receive, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit``."""
    length = headers.get(b"content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if declared > limit:
            raise _too_large(limit)
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(499, "client closed the request while sending it")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def parse_into(ctx: RequestContext, raw: bytes) -> None:
    """Fill ``ctx.body``, ``model``, ``stream`` and ``client_wants_usage``, or raise a 400."""
    if not raw:
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "missing required field 'model' (a non-empty string)", param="model")
    field = _PROMPT_FIELD[ctx.path]
    prompt = body.get(field)
    if field == "messages":
        if not isinstance(prompt, list) or not prompt:
            raise ApiError(400, "missing required field 'messages' (a non-empty list)", param=field)
        for message in prompt:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ApiError(400, "each message must be an object with a 'role'", param=field)
    elif not isinstance(prompt, (str, list)) or not prompt:
        raise ApiError(400, "missing required field 'prompt' (a string or list)", param=field)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ApiError(400, "'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    ctx.raw_body = raw
    ctx.body = body
    ctx.model = model
    ctx.stream = bool(stream)
    ctx.client_wants_usage = bool(options and options.get("include_usage"))


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body exceeds the limit of {limit} bytes")
