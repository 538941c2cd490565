"""Facts: the whole rendered conversation, exact or approximate, hashes the engine agrees with."""

from __future__ import annotations

import pytest

from sluice.routing.config import RoutingConfig, build_routing
from sluice.routing.facts_builder import FactsBuilder, SessionKeySource
from sluice.routing.hashing import hash_token_blocks
from sluice.sim import block_hash as sim_block_hash
from sluice.sim.tokenizer import WordTokenizer, render_llama3_chat

CHAT = [
    {"role": "system", "content": "You are a careful assistant. " * 10},
    {"role": "user", "content": "Tell me about rivers and lakes. " * 8},
]


def _headers(values: dict[str, str]):
    return lambda name: values.get(name)


def test_routing_hashes_equal_the_simulated_engine_hashes() -> None:
    tokens = list(range(1000, 1000 + 16 * 9 + 5))
    assert hash_token_blocks(tokens, 16) == sim_block_hash.hash_token_blocks(tokens, 16)
    assert hash_token_blocks(tokens, 16, extra_key="sql") == sim_block_hash.hash_token_blocks(
        tokens, 16, lora_name="sql"
    )


def test_llama3_template_matches_the_engine_rendering() -> None:
    builder = FactsBuilder()
    assert builder.prompt({"messages": CHAT}) == render_llama3_chat(CHAT)


def test_exact_facts_use_the_tokenizer_and_engine_block_size() -> None:
    tok = WordTokenizer()
    builder = FactsBuilder(tok.encode, block_size=16)
    facts = builder.build({"model": "m", "messages": CHAT, "max_tokens": 7})
    ids = tok.encode(render_llama3_chat(CHAT))
    assert facts.prompt_tokens == len(ids)
    assert list(facts.block_hashes) == sim_block_hash.hash_token_blocks(ids, 16)
    assert facts.max_tokens == 7 and builder.tokens_per_block == 16
    builder.build({"model": "m", "messages": CHAT})
    assert builder.cache.hits == 1 and builder.cache.misses == 1


def test_the_whole_conversation_counts_not_the_first_message() -> None:
    builder = FactsBuilder()
    one = builder.build({"model": "m", "messages": CHAT})
    two = builder.build(
        {
            "model": "m",
            "messages": [
                *CHAT,
                {"role": "assistant", "content": "Rivers flow to the sea. " * 6},
                {"role": "user", "content": "And lakes? " * 12},
            ],
        }
    )
    assert two.prompt_tokens > one.prompt_tokens
    assert len(two.block_hashes) > len(one.block_hashes)
    # the next turn extends the previous one: every full block of turn one is shared
    shared = len(one.block_hashes) - 1  # the last may straddle the generation prompt
    assert list(two.block_hashes[:shared]) == list(one.block_hashes[:shared])


def test_approximate_facts_estimate_tokens_from_bytes() -> None:
    builder = FactsBuilder(text_block_bytes=64)
    facts = builder.build({"model": "m", "prompt": "x" * 640})
    assert facts.prompt_tokens == 160 and len(facts.block_hashes) == 10
    assert builder.tokens_per_block == 16
    ids = builder.build({"model": "m", "prompt": list(range(40))})
    assert ids.prompt_tokens == 40 and len(ids.block_hashes) == 2


def test_adapter_session_kind_and_version_come_from_the_request() -> None:
    builder = FactsBuilder(session=SessionKeySource(header="x-session-id", jwt_claim="sub"))
    body = {"model": "llama:sql", "messages": CHAT, "user": "u1"}
    facts = builder.build(body, _headers({"x-sluice-kind": "Batch"}), request_id="r1")
    assert (facts.model, facts.adapter, facts.kind) == ("llama", "sql", "batch")
    assert facts.session_key == "u1" and facts.request_id == "r1"
    plain = builder.build({"model": "llama", "messages": CHAT})
    assert plain.block_hashes[0] != facts.block_hashes[0]  # adapters partition the cache
    by_field = builder.build({"model": "llama", "adapter": "sql", "messages": CHAT})
    assert by_field.adapter == "sql"
    claims = builder.build(body, claims={"sub": "alice"})
    assert claims.session_key == "alice"
    header = builder.build(body, _headers({"x-session-id": "s9"}), claims={"sub": "alice"})
    assert header.session_key == "s9"
    pinned = builder.build(body, _headers({"x-sluice-model-version": "llama-v2"}))
    assert pinned.version_override == "llama-v2"


def test_build_routing_keeps_block_units_consistent() -> None:
    facts, router, index = build_routing(RoutingConfig())
    assert index is not None and index.tokens_per_block == facts.tokens_per_block == 16
    assert router.policy.name == "affinity_cost"
    assert router.policy.free_queue is True  # type: ignore[attr-defined]  # approximate default
    off = RoutingConfig.model_validate({"prefix_index": {"free_queue": False}})
    assert build_routing(off)[1].policy.free_queue is False  # type: ignore[attr-defined]
    tok = WordTokenizer()
    cfg = RoutingConfig.model_validate(
        {"prefix_index": {"mode": "precise", "block_size": 32}, "policy": "prefix_affinity"}
    )
    facts, router, index = build_routing(cfg, tok.encode)
    assert index is not None and index.tokens_per_block == 32 == facts.block_size
    assert router.policy.learn is True  # type: ignore[attr-defined]  # predicts dispatches
    # the engines' events say what they evicted: no free-queue model on top
    assert router.policy.free_queue is False  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="tokenizer"):
        build_routing(cfg)
    cfg.prefix_index.predict_dispatch = False
    _, router, _ = build_routing(cfg, tok.encode)
    assert router.policy.learn is False  # type: ignore[attr-defined]  # events only
    _, router, index = build_routing(RoutingConfig(policy="round_robin"))
    assert index is None
    with pytest.raises(ValueError):
        RoutingConfig.model_validate({"pools": [{"pool": "a", "when_full": "drop"}]})


def test_remote_tokens_are_used_and_a_failed_tokenize_routes_without_keys() -> None:
    builder = FactsBuilder(remote_tokens=True, block_size=16)
    assert builder.exact and builder.tokens_per_block == 16
    ids = list(range(100, 164))
    facts = builder.build({"model": "m", "messages": CHAT}, token_ids=ids)
    assert facts.prompt_tokens == 64 and list(facts.block_hashes) == hash_token_blocks(ids, 16)
    # the engine could not tokenize: an estimate, and no text-block keys a token index can't use
    fallback = builder.build({"model": "m", "messages": CHAT})
    assert fallback.prompt_tokens > 1 and list(fallback.block_hashes) == []
    cfg = RoutingConfig.model_validate(
        {"prefix_index": {"mode": "precise"}, "facts": {"remote_tokenize": True}}
    )
    facts_builder, _, index = build_routing(cfg)
    assert facts_builder.remote_tokens and index is not None and index.tokens_per_block == 16


def test_bytes_per_token_is_learned_from_engine_counts() -> None:
    builder = FactsBuilder(text_block_bytes=64)
    assert builder.tokens_per_block == 16
    body = {"model": "m", "prompt": "y" * 7000}
    facts = builder.build(body)
    assert facts.prompt_bytes == 7000 and facts.prompt_tokens == 1750
    moved = [builder.observe(facts, 1000) for _ in range(200)]  # the engine says 7 bytes/token
    assert builder.bytes_per_token == pytest.approx(7.0, rel=0.01)
    assert builder.tokens_per_block == 9 and any(moved)
    assert builder.build(body).prompt_tokens == pytest.approx(1000, rel=0.01)
    exact = FactsBuilder(WordTokenizer().encode)
    exact_facts = exact.build(body)
    assert exact_facts.prompt_bytes == 0 and not exact.observe(exact_facts, 10)
    frozen = FactsBuilder(learn_bytes_per_token=False)
    assert not frozen.observe(frozen.build(body), 1000) and frozen.bytes_per_token == 4.0
