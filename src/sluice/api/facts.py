"""Build ``RequestFacts`` for a request: the one place routing inputs are extracted.

The work is the routing package's ``FactsBuilder`` (rendered prompt, exact token counts with a
tokenizer or a bytes/4 estimate without, block hashes, adapter, session key); this module only
feeds it the request context. ``Gateway.facts_builder`` may be replaced by any callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from sluice.api.context import RequestContext
from sluice.routing import RequestFacts
from sluice.routing.config import RoutingConfig, build_facts_builder
from sluice.routing.facts_builder import FactsBuilder

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
        )

    return build


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
