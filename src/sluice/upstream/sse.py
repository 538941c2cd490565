"""Watch an SSE stream as it passes through, as bytes, for what the gateway needs: usage, the
finish reason, and how many events went by (the tokens produced, should the stream be cut short).

Events are forwarded in the upstream's own bytes. Only event batches that contain a ``"usage"``
key are split and parsed (normally one per stream, the last); the usage-only chunk
(``"choices": []``) that the gateway asked for on the client's behalf is removed. The finish
reason is read at the last ``"finish_reason":`` of a batch (a string only in the final choice
chunk) and events are counted with ``bytes.count``: no per-event parsing.
"""

from __future__ import annotations

from typing import Any

import orjson

_EVENT_END = b"\n\n"
_USAGE_KEY = b'"usage"'
_FINISH_KEY = b'"finish_reason":'
_DATA = b"data:"
_MAX_REASON = 64
# Where the proxy leaves a stream's tap in ``RequestContext.extra`` (settle hooks read it).
STREAM_TAP = "stream_tap"
# A stream that never ends an event is passed on rather than buffered without bound.
_MAX_PENDING = 1 << 16


class StreamTap:
    __slots__ = ("_pending", "_strip_usage", "events", "finish_reason", "usage")

    def __init__(self, strip_usage: bool) -> None:
        self._pending = b""
        self._strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        # Complete ``data:`` events passed on (role, token, final, usage and [DONE] events alike;
        # vLLM and the simulator send one token per choice event).
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now: every complete event so far, minus a removed usage chunk."""
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(_EVENT_END)
        if cut < 0:
            if len(data) > _MAX_PENDING:
                self._pending = b""
                return data
            self._pending = data
            return b""
        cut += 2
        if cut == len(data):
            complete, self._pending = data, b""
        else:
            complete, self._pending = data[:cut], data[cut:]
        self.events += complete.count(_DATA)
        at = complete.rfind(_FINISH_KEY)
        if at >= 0:
            self._finish_at(complete, at + len(_FINISH_KEY))
        # One backward search: the usage chunk, when there is one, is at the batch's end, and
        # its position is what ``_scan`` needs (a forward ``in`` would read the whole batch).
        at = complete.rfind(_USAGE_KEY)
        if at < 0:
            return complete
        return self._scan(complete, at)

    def tokens_seen(self, chat: bool) -> int:
        """Tokens produced so far, for a stream cut short before its usage report: one per event,
        less the chat role chunk (which carries no token)."""
        return max(0, self.events - 1) if chat else self.events

    def _finish_at(self, data: bytes, i: int) -> None:
        if data[i : i + 1] == b" ":
            i += 1
        if data[i : i + 1] != b'"':
            return  # null: not finished yet
        end = data.find(b'"', i + 1, i + 2 + _MAX_REASON)
        if end > 0:
            self.finish_reason = data[i + 1 : end].decode("utf-8", "replace")

    def flush(self) -> bytes:
        """What is left when the upstream ends (an unterminated last event)."""
        rest, self._pending = self._pending, b""
        if rest:
            self.events += rest.count(_DATA)
            at = rest.rfind(_FINISH_KEY)
            if at >= 0:
                self._finish_at(rest, at + len(_FINISH_KEY))
        at = rest.rfind(_USAGE_KEY) if rest else -1
        if at >= 0:
            return self._scan(rest, at)
        return rest

    def _scan(self, complete: bytes, at: int) -> bytes:
        # Only the last event that carries usage matters (``at``, the last ``"usage"``): the
        # final totals (with continuous_usage_stats every chunk has running totals; the last
        # one is complete).
        start = complete.rfind(_EVENT_END, 0, at)
        start = 0 if start < 0 else start + 2
        end = complete.find(_EVENT_END, at)
        end = len(complete) if end < 0 else end + 2
        payload = _data_of(complete[start:end])
        if payload is None:
            return complete
        usage = payload.get("usage")
        if not isinstance(usage, dict):
            return complete
        self.usage = usage
        if self._strip_usage and not payload.get("choices"):
            return complete[:start] + complete[end:]
        return complete


def _data_of(event: bytes) -> dict[str, Any] | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                value = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None
