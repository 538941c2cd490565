"""Usage of a stream that ended without the engine's usage report (the client went away, or the
engine failed mid-stream): what limits settle with and what the audit row records."""

from __future__ import annotations

from sluice.api.context import RequestContext
from sluice.upstream.sse import STREAM_TAP, StreamTap


def streamed_usage(ctx: RequestContext) -> tuple[int, int] | None:
    """``(prompt tokens, completion tokens)``: the gateway's prompt estimate and one token per
    streamed event; None when the request was not streamed through a tap."""
    tap = ctx.extra.get(STREAM_TAP)
    if not isinstance(tap, StreamTap):
        return None
    prompt = ctx.facts.prompt_tokens if ctx.facts is not None else len(ctx.raw_body) // 4
    return prompt, tap.tokens_seen(ctx.path.endswith("/chat/completions"))
