"""OpenAI-style rate-limit headers and the 429 body. PURE."""

from __future__ import annotations

import math

from sluice.admission.limits.buckets import BucketState, Kind, Verdict


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
_REQUESTS = _NAMES[Kind.REQUESTS]
_TOKENS = _NAMES[Kind.TOKENS]
# Limits are few (one per configured scope and override): their encoded values are kept.
_LIMITS: dict[int, bytes] = {}
# Encoded once: small counts, every sub-second reset (whole milliseconds) and whole-second resets
# as they occur (bounded).
_SMALL = [str(i).encode() for i in range(4096)]
_MILLIS = [f"{i}ms".encode() for i in range(1001)]
_SECONDS: dict[int, bytes] = {}


def duration_bytes(seconds: float) -> bytes:
    """``duration(seconds).encode()``, from tables."""
    if seconds < 1:
        ms = math.ceil(seconds * 1000)
        return _MILLIS[ms if ms > 0 else 0]
    total = math.ceil(seconds)
    out = _SECONDS.get(total)
    if out is None:
        out = duration(seconds).encode()
        if len(_SECONDS) < 4096:
            _SECONDS[total] = out
    return out


def _append(out: list[tuple[bytes, bytes]], names: tuple[bytes, ...], state: BucketState) -> None:
    _three(out, names, state.limit, state.remaining, state.reset_after)


def append_headers(
    out: list[tuple[bytes, bytes]], kind: Kind, limit: int, remaining: int, reset_after: float
) -> None:
    """The three headers of one bucket of ``kind`` (requests or tokens)."""
    _three(out, _NAMES[kind], limit, remaining, reset_after)


def _three(
    out: list[tuple[bytes, bytes]],
    names: tuple[bytes, ...],
    limit_value: int,
    remaining: int,
    reset_after: float,
) -> None:
    limit_name, remaining_name, reset_name = names
    limit = _LIMITS.get(limit_value)
    if limit is None:
        limit = str(limit_value).encode()
        if len(_LIMITS) < 1024:
            _LIMITS[limit_value] = limit
    out.append((limit_name, limit))
    out.append(
        (remaining_name, _SMALL[remaining] if 0 <= remaining < 4096 else str(remaining).encode())
    )
    out.append((reset_name, duration_bytes(reset_after)))


def rate_limit_headers(verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` of the tightest buckets (the
    least remaining of each kind, the first of equals: ``Verdict.tightest``), in one pass."""
    requests = tokens = None
    for state in verdict.states:
        kind = state.kind
        if kind is Kind.REQUESTS:
            if requests is None or state.remaining < requests.remaining:
                requests = state
        elif kind is Kind.TOKENS and (tokens is None or state.remaining < tokens.remaining):
            tokens = state
    out: list[tuple[bytes, bytes]] = []
    if requests is not None:
        _append(out, _REQUESTS, requests)
    if tokens is not None:
        _append(out, _TOKENS, tokens)
    return out


def retry_after(seconds: float) -> tuple[bytes, bytes]:
    """Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds)."""
    return (b"retry-after", str(max(1, math.ceil(seconds))).encode())
