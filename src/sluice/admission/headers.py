"""OpenAI-style rate-limit headers and the 429 body. PURE."""

from __future__ import annotations

import math

from sluice.admission.limits.buckets import Kind, Verdict


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


# Header names, encoded once.
_NAMES = {
    kind: tuple(
        f"x-ratelimit-{what}-{kind.value}".encode() for what in ("limit", "remaining", "reset")
    )
    for kind in (Kind.REQUESTS, Kind.TOKENS)
}
# Limits are few (one per configured scope and override): their encoded values are kept.
_LIMITS: dict[int, bytes] = {}


def rate_limit_headers(verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` of the tightest buckets."""
    out: list[tuple[bytes, bytes]] = []
    for kind, (limit_name, remaining_name, reset_name) in _NAMES.items():
        state = verdict.tightest(kind)
        if state is None:
            continue
        limit = _LIMITS.get(state.limit)
        if limit is None:
            limit = str(state.limit).encode()
            if len(_LIMITS) < 1024:
                _LIMITS[state.limit] = limit
        out.append((limit_name, limit))
        out.append((remaining_name, str(state.remaining).encode()))
        out.append((reset_name, duration(state.reset_after).encode()))
    return out


def retry_after(seconds: float) -> tuple[bytes, bytes]:
    """Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds)."""
    return (b"retry-after", str(max(1, math.ceil(seconds))).encode())
