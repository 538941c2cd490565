"""The ``routing`` section of the configuration, and the builders that turn it into objects.

```yaml
routing:
  policy: affinity_cost       # round_robin | least_load | prefix_affinity | weighted |
                              # cost_model | affinity_cost
  options: {}                 # keyword options of that policy (e.g. cache_threshold: 0.3)
  prefix_index:
    mode: approximate         # approximate (learn from decisions) | precise (KV events) | off
    predict_dispatch: true    # precise mode: also record each decision until events confirm it
    free_queue: true          # approximate mode: model the engines' free queues (see PrefixIndex)
    block_size: 16            # the engines' KV block size (token blocks, precise mode)
    text_block_bytes: 64      # approximate blocks when there is no tokenizer
    default_capacity_blocks: 31250
  facts:
    tokenizer: null           # path to a local tokenizer.json: exact tokens and hashes
    remote_tokenize: false    # or the engines' /tokenize (cached): exact, one round trip
    template: llama3          # chat template the engines use (llama3 | chatml)
  prompt_classes: [{name: chat, max_tokens: 2048}, {name: long, min_tokens: 2048}]
  pools: [{prompt_class: long, pool: long-context, when_full: spill, spill_to: [default]}]
  full_when: {max_waiting: 10, kv_usage: 0.95}
  wait_retry_after_s: 0.5     # a "wait" pool is polled this often ...
  wait_max_s: 30              # ... for at most this long, then 503 + Retry-After
  versions: {llama: [{name: llama-v1, weight: 95}, {name: llama-v2, weight: 5}]}
  session: {enabled: false, header: x-session-id, jwt_claim: null, user_field: true,
            ttl_s: 600, max_entries: 100000}
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sluice.routing.affinity import SessionAffinity
from sluice.routing.cache_aware import CacheAwarePolicy
from sluice.routing.facts_builder import FactsBuilder, SessionKeySource, Tokenize
from sluice.routing.hashing import APPROX_BYTES_PER_TOKEN
from sluice.routing.policy import Policy, make_policy
from sluice.routing.pools import FullWhen, PoolMap, PoolRule, PromptClass
from sluice.routing.prefix_index import DEFAULT_CAPACITY_BLOCKS, PrefixIndex
from sluice.routing.router import Router
from sluice.routing.versions import ModelVersion, VersionMap

# The default policy: the one that won the quality benchmark (bench/results/routing.md).
DEFAULT_POLICY = "affinity_cost"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrefixIndexConfig(_Section):
    mode: Literal["approximate", "precise", "off"] = "approximate"
    # Precise mode: the engine publishes BlockStored only once a prefill has filled the blocks,
    # so siblings sent meanwhile would miss; recording each decision at once (as approximate
    # mode does) covers that window, and the engine's BlockRemoved later evicts it exactly.
    predict_dispatch: bool = True
    # Approximate mode: model each engine's free queue (prompts in flight pinned, ended ones
    # evictable within the engine's free blocks) instead of a plain LRU of the engine's size.
    free_queue: bool = True
    block_size: int = Field(16, ge=1, le=1024)
    text_block_bytes: int = Field(64, ge=4)
    default_capacity_blocks: int = Field(DEFAULT_CAPACITY_BLOCKS, ge=1)


class FactsConfig(_Section):
    tokenizer: str | None = None  # a local tokenizer.json
    # Or ask an engine's /tokenize (cached by prompt); costs a round trip per new prompt.
    remote_tokenize: bool = False
    # Without token ids: UTF-8 bytes per token for estimates and the index's block unit.
    bytes_per_token: float = Field(APPROX_BYTES_PER_TOKEN, gt=0)
    # ... the starting rate: the gateway refines it from the engines' reported prompt tokens.
    learn_bytes_per_token: bool = True
    template: Literal["llama3", "chatml"] = "llama3"
    adapter_separator: str = ":"
    kind_header: str = "x-sluice-kind"
    version_header: str = "x-sluice-model-version"
    cache_tokens: int = Field(4_000_000, ge=0)


class PromptClassConfig(_Section):
    name: str
    min_tokens: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    kind: Literal["interactive", "batch"] | None = None


class PoolRuleConfig(_Section):
    pool: str
    model: str = "*"
    adapter: str = "*"
    prompt_class: str = "*"
    when_full: Literal["spill", "wait"] = "spill"
    spill_to: list[str] = Field(default_factory=list)


class FullWhenConfig(_Section):
    max_in_flight: int = Field(0, ge=0)
    max_waiting: int = Field(10, ge=0)
    kv_usage: float = Field(0.95, gt=0, le=1.0)


class VersionConfig(_Section):
    name: str
    weight: float = Field(ge=0)


class SessionConfig(_Section):
    enabled: bool = False
    header: str | None = "x-session-id"
    jwt_claim: str | None = None
    user_field: bool = True
    ttl_s: float = Field(600.0, gt=0)
    max_entries: int = Field(100_000, ge=1)


class RoutingConfig(_Section):
    policy: str = DEFAULT_POLICY
    options: dict[str, Any] = Field(default_factory=dict)
    prefix_index: PrefixIndexConfig = Field(default_factory=PrefixIndexConfig)
    facts: FactsConfig = Field(default_factory=FactsConfig)
    prompt_classes: list[PromptClassConfig] = Field(default_factory=list)
    pools: list[PoolRuleConfig] = Field(default_factory=list)
    full_when: FullWhenConfig = Field(default_factory=FullWhenConfig)
    wait_retry_after_s: float = Field(0.5, gt=0)
    # How long the gateway holds a request whose pool is full and says "wait" (0: 503 at once).
    wait_max_s: float = Field(30.0, ge=0)
    versions: dict[str, list[VersionConfig]] = Field(default_factory=dict)
    session: SessionConfig = Field(default_factory=SessionConfig)


def build_index(config: RoutingConfig, exact_tokens: bool) -> PrefixIndex:
    """The index whose block unit matches what the facts builder hashes."""
    ix = config.prefix_index
    tokens_per_block = (
        ix.block_size
        if exact_tokens
        else max(1, round(ix.text_block_bytes / config.facts.bytes_per_token))
    )
    return PrefixIndex(ix.default_capacity_blocks, tokens_per_block=tokens_per_block)


def build_policy(config: RoutingConfig, index: PrefixIndex | None) -> Policy:
    options = dict(config.options)
    # Only cache-aware policies take an index; round_robin and least_load take no options.
    if index is not None and config.policy not in ("round_robin", "least_load"):
        ix = config.prefix_index
        learn = ix.mode == "approximate" or ix.predict_dispatch
        options = {"index": index, "learn": learn, **options}
        # Precise mode never models the free queue: the engines' events say what they evicted.
        options.setdefault("free_queue", ix.mode == "approximate" and ix.free_queue)
    return make_policy(config.policy, **options)


def build_router(config: RoutingConfig, policy: Policy) -> Router:
    pools = PoolMap(
        classes=[
            PromptClass(c.name, c.min_tokens, c.max_tokens, c.kind) for c in config.prompt_classes
        ],
        rules=[
            PoolRule(r.pool, r.model, r.adapter, r.prompt_class, r.when_full, tuple(r.spill_to))
            for r in config.pools
        ],
        full_when=FullWhen(
            config.full_when.max_in_flight, config.full_when.max_waiting, config.full_when.kv_usage
        ),
        wait_retry_after=config.wait_retry_after_s,
    )
    versions = VersionMap(
        {m: [ModelVersion(v.name, v.weight) for v in vs] for m, vs in config.versions.items()}
    )
    s = config.session
    affinity = SessionAffinity(s.ttl_s, s.max_entries) if s.enabled else None
    return Router(policy, pools=pools, versions=versions, affinity=affinity)


def build_facts_builder(config: RoutingConfig, tokenize: Tokenize | None) -> FactsBuilder:
    f, s = config.facts, config.session
    return FactsBuilder(
        tokenize,
        template=f.template,
        block_size=config.prefix_index.block_size,
        text_block_bytes=config.prefix_index.text_block_bytes,
        session=SessionKeySource(s.header, s.jwt_claim, s.user_field),
        adapter_separator=f.adapter_separator,
        kind_header=f.kind_header,
        version_header=f.version_header,
        cache_tokens=f.cache_tokens,
        remote_tokens=f.remote_tokenize and tokenize is None,
        bytes_per_token=f.bytes_per_token,
        learn_bytes_per_token=f.learn_bytes_per_token,
    )


def build_routing(
    config: RoutingConfig, tokenize: Tokenize | None = None
) -> tuple[FactsBuilder, Router, PrefixIndex | None]:
    """Everything the gateway needs, consistent with each other (same block unit)."""
    facts = build_facts_builder(config, tokenize)
    if config.prefix_index.mode == "precise" and not facts.exact:
        # KV events name token blocks; without token ids no request could ever match them.
        raise ValueError(
            "routing.prefix_index.mode 'precise' needs routing.facts.tokenizer or remote_tokenize"
        )
    index = None if config.prefix_index.mode == "off" else build_index(config, facts.exact)
    policy = build_policy(config, index)
    index = policy.index if isinstance(policy, CacheAwarePolicy) else None
    return facts, build_router(config, policy), index
