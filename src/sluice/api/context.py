"""RequestContext: everything known about one request, flowing through every stage.

Stages: parse -> admit (hooks) -> route -> proxy -> settle (hooks). Hooks read and write the
context; ``extra`` is theirs to stash state between admit and settle (a limit reservation, an
audit draft) without the gateway knowing what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from sluice.routing import Decision, EndpointState, RequestFacts

_INCLUDE_USAGE = b',"stream_options":{"include_usage":true}}'
# Header name -> its lower-cased bytes key in ``RequestContext.headers`` (encoded once).
_HEADER_KEYS: dict[str, bytes] = {}


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    known: bool = False

    def update(self, usage: dict[str, Any]) -> None:
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.completion_tokens = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            self.cached_tokens = int(details.get("cached_tokens") or 0)
        self.known = True


# How a request ended; also the ``outcome`` field of the request log line.
OK = "ok"  # the engine answered (any status it chose, including its own 4xx)
REJECTED = "rejected"  # refused by the gateway before reaching an engine (4xx, 503)
UPSTREAM_ERROR = "upstream_error"  # no engine could answer, or one failed mid-stream
CANCELLED = "cancelled"  # the client went away first


@dataclass(slots=True)
class RequestContext:
    request_id: str
    path: str  # the upstream path, e.g. "/v1/chat/completions"
    headers: dict[bytes, bytes]  # lower-case names, as received
    client: str | None
    started: float  # monotonic seconds
    started_wall: float  # unix seconds, for records
    raw_body: bytes = b""
    body: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    stream: bool = False
    # The client asked for the usage chunk itself (stream_options.include_usage).
    client_wants_usage: bool = False
    # Identity, filled by admission hooks.
    tenant: str | None = None
    user: str | None = None
    api_key_id: str | None = None
    priority: int = 0
    admitted: bool = False
    facts: RequestFacts | None = None
    decision: Decision | None = None
    endpoint: EndpointState | None = None
    attempts: int = 0
    first_byte_at: float | None = None  # monotonic; the first body byte from the engine
    finished_at: float | None = None
    usage: Usage = field(default_factory=Usage)
    status: int = 0
    outcome: str = ""
    # The client has received the response status line (a stream has begun).
    response_started: bool = False
    # The last byte is on its way; a disconnect from now on is not a cancellation.
    response_done: bool = False
    client_gone: bool = False
    error: str | None = None
    # Set by hooks that rewrite the body (guardrails); the proxy then re-encodes ``body``.
    body_modified: bool = False
    # Extra response headers (rate-limit headers and the like), added by hooks.
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        key = _HEADER_KEYS.get(name)
        if key is None:
            key = name.lower().encode("latin-1")
            if len(_HEADER_KEYS) < 256:  # names come from code and config, but stay bounded
                _HEADER_KEYS[name] = key
        value = self.headers.get(key)
        return None if value is None else value.decode("latin-1")

    @property
    def ttft(self) -> float | None:
        return None if self.first_byte_at is None else self.first_byte_at - self.started

    @property
    def e2e(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started

    def upstream_body(self, model: str | None = None) -> bytes:
        """The bytes sent to the engine: the client's own, unless something must change.

        Streams always ask the engine for usage so tokens are known; the extra chunk is removed
        again on the way back when the client did not ask for it. ``model`` renames the model
        (a version or LoRA adapter chosen by routing).
        """
        inject_usage = self.stream and not self.client_wants_usage
        if not (inject_usage or model or self.body_modified):
            return self.raw_body
        if inject_usage and not (model or self.body_modified) and "stream_options" not in self.body:
            # The common case, done on bytes: append the key before the closing brace.
            end = self.raw_body.rstrip()
            if end.endswith(b"}"):
                return end[:-1] + _INCLUDE_USAGE
        body = dict(self.body)
        if inject_usage:
            options = body.get("stream_options")
            merged = dict(options) if isinstance(options, dict) else {}
            merged["include_usage"] = True
            body["stream_options"] = merged
        if model:
            body["model"] = model
        return orjson.dumps(body)
