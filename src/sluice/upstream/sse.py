"""Watch an SSE stream as it passes through, as bytes, for the one thing the gateway needs: usage.

Events are forwarded in the upstream's own bytes. Only event batches that contain a ``"usage"``
key are split and parsed (normally one per stream, the last); the usage-only chunk
(``"choices": []``) that the gateway asked for on the client's behalf is removed.
"""

from __future__ import annotations

from typing import Any

import orjson

_EVENT_END = b"\n\n"
_USAGE_KEY = b'"usage"'
# A stream that never ends an event is passed on rather than buffered without bound.
_MAX_PENDING = 1 << 16


class StreamTap:
    __slots__ = ("_pending", "_strip_usage", "usage")

    def __init__(self, strip_usage: bool) -> None:
        self._pending = b""
        self._strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None

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
        if _USAGE_KEY not in complete:
            return complete
        return self._scan(complete)

    def flush(self) -> bytes:
        """What is left when the upstream ends (an unterminated last event)."""
        rest, self._pending = self._pending, b""
        if rest and _USAGE_KEY in rest:
            return self._scan(rest)
        return rest

    def _scan(self, complete: bytes) -> bytes:
        # Only the last event that carries usage matters: the final totals (with
        # continuous_usage_stats every chunk has running totals; the last one is complete).
        at = complete.rfind(_USAGE_KEY)
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
