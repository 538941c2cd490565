"""Build ``RequestFacts`` from a parsed request: the one place routing inputs are extracted.

The default estimates prompt tokens as characters / 4 over every message's text. A tokenizer-based
builder (exact counts, block hashes) replaces it through ``Gateway.facts_builder``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sluice.api.context import RequestContext
from sluice.routing import RequestFacts

FactsBuilder = Callable[[RequestContext], RequestFacts]

CHARS_PER_TOKEN = 4


def estimate_facts(ctx: RequestContext) -> RequestFacts:
    body = ctx.body
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return RequestFacts(
        model=ctx.model,
        prompt_tokens=max(1, prompt_chars(body) // CHARS_PER_TOKEN),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        session_key=_session_key(ctx),
        priority=ctx.priority,
        tenant=ctx.tenant,
        stream=ctx.stream,
        request_id=ctx.request_id,
    )


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of prompt text: every message content (text parts too), or the prompt field."""
    messages = body.get("messages")
    if isinstance(messages, list):
        total = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        total += len(part["text"])
        return total
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        # A list of strings, or of token ids (then each id is one token, i.e. CHARS_PER_TOKEN).
        return sum(len(p) if isinstance(p, str) else CHARS_PER_TOKEN for p in prompt)
    return 0


def _session_key(ctx: RequestContext) -> str | None:
    value = ctx.headers.get(b"x-session-id")
    if value is not None:
        return value.decode("latin-1")
    user = ctx.body.get("user")
    return user if isinstance(user, str) else None
