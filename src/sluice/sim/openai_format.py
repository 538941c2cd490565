"""OpenAI/vLLM wire shapes for the simulator: request parsing, response bodies, SSE chunks, errors.

Parsing is hand-written rather than a schema library so that every rejection carries a message a
person can act on, in vLLM's error shape, and so that the per-token path stays a few byte
concatenations: each streamed chunk is a pre-encoded prefix, the JSON-escaped text, and a
pre-encoded suffix.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    413: "RequestEntityTooLargeError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    fallback = "BadRequestError" if status < 500 else "InternalServerError"
    error_type = ERROR_TYPES.get(status, fallback)
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": status}}
    )


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model `{model}` does not exist.", "model")


Kind = Literal["chat", "completion"]


@dataclass(slots=True)
class GenerationRequest:
    """One parsed ``/v1/chat/completions`` or ``/v1/completions`` request."""

    kind: Kind
    model: str | None
    # Exactly one of the two: chat messages (rendered later with the chat template) or a prompt.
    messages: list[dict[str, Any]] | None = None
    prompt_text: str | None = None
    prompt_token_ids: list[int] | None = None
    max_tokens: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    continuous_usage_stats: bool = False
    priority: int = 0
    seed: int | None = None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"Invalid JSON in request body: {exc}") from exc
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return body


def parse_generation_request(raw: bytes, kind: Kind) -> GenerationRequest:
    body = parse_json_object(raw)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "'model' must be a string.", "model")
    req = GenerationRequest(kind=kind, model=model)
    if kind == "chat":
        req.messages = _parse_messages(body.get("messages"))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        _parse_prompt(body.get("prompt"), req)
        max_tokens = body.get("max_tokens", 16)  # OpenAI's and vLLM's completions default
    if max_tokens is not None:
        req.max_tokens = _int(max_tokens, "max_tokens")
        if req.max_tokens < 1:
            message = f"max_tokens must be at least 1, got {req.max_tokens}."
            raise APIError(400, message, "max_tokens")
    req.min_tokens = _int(body.get("min_tokens", 0), "min_tokens")
    if req.min_tokens < 0:
        raise APIError(400, f"min_tokens must be >= 0, got {req.min_tokens}.", "min_tokens")
    if req.max_tokens is not None and req.min_tokens > req.max_tokens:
        raise APIError(
            400,
            f"min_tokens must be less than or equal to max_tokens={req.max_tokens}, "
            f"got {req.min_tokens}.",
            "min_tokens",
        )
    req.ignore_eos = _bool(body.get("ignore_eos", False), "ignore_eos")
    req.stop = _parse_stop(body.get("stop"))
    req.stream = _bool(body.get("stream", False), "stream")
    options = body.get("stream_options")
    if options is not None:
        if not req.stream:
            raise APIError(
                400, "Stream options can only be defined when `stream=True`.", "stream_options"
            )
        if not isinstance(options, dict):
            raise APIError(400, "'stream_options' must be an object.", "stream_options")
        req.include_usage = _bool(options.get("include_usage", False), "include_usage")
        req.continuous_usage_stats = _bool(
            options.get("continuous_usage_stats", False), "continuous_usage_stats"
        )
    n = _int(body.get("n", 1), "n")
    if n != 1:
        message = f"The simulator generates one choice per request (n=1), got n={n}."
        raise APIError(400, message, "n")
    req.priority = _int(body.get("priority", 0), "priority")
    if body.get("seed") is not None:
        req.seed = _int(body["seed"], "seed")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise APIError(400, f"'{name}' must be a number.", name)
    return req


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{name}' must be an integer, got {value!r:.40}.", name)
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be a boolean, got {value!r:.40}.", name)
    return value


def _parse_stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise APIError(400, "'stop' must be a string or a list of strings.", "stop")


def _parse_messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise APIError(400, "'messages' must be a non-empty list of messages.", "messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise APIError(
                400, f"messages[{i}] must be an object with a string 'role'.", "messages"
            )
        content = message.get("content")
        if isinstance(content, list):
            # Content parts: the simulator reads the text parts and ignores the rest.
            texts = []
            for part in content:
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise APIError(400, f"messages[{i}].content has a malformed part.", "messages")
                if part["type"] == "text":
                    if not isinstance(part.get("text"), str):
                        raise APIError(400, f"messages[{i}] text part needs 'text'.", "messages")
                    texts.append(part["text"])
            content = "\n".join(texts)
        elif content is not None and not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string or a list.", "messages")
        messages.append({"role": message["role"], "content": content or ""})
    return messages


def _parse_prompt(value: Any, req: GenerationRequest) -> None:
    # A one-element batch is accepted as its element; real batches are not simulated.
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise APIError(400, "'prompt' must not be empty.", "prompt")
        req.prompt_text = value
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    ):
        req.prompt_token_ids = list(value)
    elif isinstance(value, list) and len(value) > 1:
        raise APIError(
            400, "The simulator takes one prompt per request; send batches separately.", "prompt"
        )
    else:
        raise APIError(400, "'prompt' must be a non-empty string or a list of token ids.", "prompt")


def new_request_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


class ChunkEncoder:
    """Pre-encoded SSE chunks of one streamed response.

    The fixed parts (id, object, created, model) are serialised once; a token chunk is then
    ``prefix + orjson(text) + suffix``, which keeps per-token work to one small dumps call.
    """

    __slots__ = ("_delta_prefix", "_final_head", "_head", "kind")

    def __init__(self, kind: Kind, request_id: str, model: str, created: int | None = None) -> None:
        self.kind = kind
        created = int(time.time()) if created is None else created
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        head = orjson.dumps({"id": request_id, "object": obj, "created": created, "model": model})
        self._head = b"data: " + head[:-1]  # open object, ready for more keys
        if kind == "chat":
            self._delta_prefix = self._head + b',"choices":[{"index":0,"delta":{"content":'
        else:
            self._delta_prefix = self._head + b',"choices":[{"index":0,"text":'
        self._final_head = self._delta_prefix

    def role(self) -> bytes:
        """The first chat chunk: ``delta = {"role": "assistant", "content": ""}``."""
        return (
            self._head
            + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            + b'"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def delta(self, text: str, usage: dict[str, Any] | None = None) -> bytes:
        close = b"}," if self.kind == "chat" else b","
        tail = b'"logprobs":null,"finish_reason":null,"stop_reason":null}]'
        return self._delta_prefix + orjson.dumps(text) + close + tail + _usage_tail(usage)

    def final(self, text: str, finish_reason: str, usage: dict[str, Any] | None = None) -> bytes:
        close = b"}," if self.kind == "chat" else b","
        tail = b'"logprobs":null,"finish_reason":' + orjson.dumps(finish_reason)
        tail += b',"stop_reason":null}]'
        return self._final_head + orjson.dumps(text) + close + tail + _usage_tail(usage)

    def usage(self, usage: dict[str, Any], extra: dict[str, Any] | None = None) -> bytes:
        body = b',"choices":[],"usage":' + orjson.dumps(usage)
        for key, value in (extra or {}).items():
            body += b',"' + key.encode() + b'":' + orjson.dumps(value)
        return self._head + body + b"}\n\n"

    @staticmethod
    def error(status: int, message: str) -> bytes:
        return b"data: " + error_body(status, message) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _usage_tail(usage: dict[str, Any] | None) -> bytes:
    if usage is None:
        return b"}\n\n"
    return b',"usage":' + orjson.dumps(usage) + b"}\n\n"


def completion_body(
    kind: Kind,
    request_id: str,
    model: str,
    text: str,
    finish_reason: str,
    usage: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The non-streaming response body."""
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        obj = "text_completion"
    body = {
        "id": request_id,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }
    body.update(extra or {})
    return orjson.dumps(body)
