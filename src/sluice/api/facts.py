"""Build ``RequestFacts`` for a request: the one place routing inputs are extracted.

The work is the routing package's ``FactsBuilder`` (rendered prompt, exact token counts with a
tokenizer or a bytes/4 estimate without, block hashes, adapter, session key); this module only
feeds it the request context. ``Gateway.facts_builder`` may be replaced by any callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from sluice.api.context import RequestContext
from sluice.routing import EndpointState, RequestFacts
from sluice.routing.config import RoutingConfig, build_facts_builder
from sluice.routing.facts_builder import FactsBuilder
from sluice.upstream.client import EngineClient, UpstreamError

ContextFacts = Callable[[RequestContext], RequestFacts]


def context_facts(builder: FactsBuilder) -> ContextFacts:
    def build(ctx: RequestContext) -> RequestFacts:
        return builder.build(
            ctx.body,
            ctx.header,
            claims=ctx.extra.get("claims"),
            request_id=ctx.request_id,
            priority=ctx.priority,
            tenant=ctx.tenant,
            token_ids=ctx.extra.get("token_ids"),
        )

    return build


class EngineTokenizer:
    """Exact prompt tokens from an engine's ``/tokenize`` (``routing.facts.remote_tokenize``).

    One round trip per *new* prompt: the ids are cached in the facts builder, keyed by the
    rendered prompt. Chat requests send their messages, so the engine applies its own chat
    template. Any failure returns None and the request is routed without cache information.
    """

    def __init__(
        self,
        client: EngineClient,
        states: Callable[[], Sequence[EndpointState]],
        builder: FactsBuilder,
        clock: Callable[[], float],
        timeout_s: float = 2.0,
    ) -> None:
        self.client, self.states, self.builder = client, states, builder
        self.clock, self.timeout_s = clock, timeout_s
        self.failures = 0

    async def token_ids(self, ctx: RequestContext) -> Sequence[int] | None:
        prompt = self.builder.prompt(ctx.body)
        if not isinstance(prompt, str):
            return None  # the client sent token ids, or there is nothing to tokenize
        cached = self.builder.cache.peek(prompt)
        if cached is not None:
            return cached
        messages = ctx.body.get("messages")
        now = self.clock()
        for state in [s for s in self.states() if s.available(now)][:2]:
            # The engine checks the model name: send one it serves.
            model = min(state.endpoint.models) if state.endpoint.models else ctx.model
            payload: dict[str, Any] = {"model": model}
            if isinstance(messages, list):
                payload["messages"] = messages
            else:
                payload["prompt"] = prompt
            try:
                status, data = await self.client.post_small(
                    state.endpoint.url + "/tokenize", orjson.dumps(payload), self.timeout_s
                )
                tokens = orjson.loads(data).get("tokens") if status == 200 else None
            except (UpstreamError, orjson.JSONDecodeError, AttributeError):
                tokens = None
            if isinstance(tokens, list):
                self.builder.cache.put(prompt, tokens)
                return tokens
            self.failures += 1
        return None


def facts_builder_from_config(config: RoutingConfig) -> FactsBuilder:
    return build_facts_builder(config, _tokenizer(config.facts.tokenizer))


def _tokenizer(path: str | None) -> Callable[[str], Sequence[int]] | None:
    """A local tokenizer.json (no hub access); None means estimated counts."""
    if path is None:
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(path).expanduser()))

    def tokenize(text: str) -> Sequence[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return tokenize
