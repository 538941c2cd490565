"""The engine end to end: requests in, tokens out, on the virtual clock."""

from __future__ import annotations

import pytest

from sluice.sim.engine import Engine, EngineConfig, RequestError, SamplingParams, SimRequest
from sluice.sim.tokenizer import WordTokenizer, text_of_length

TOK = WordTokenizer()


def prompt(n: int, seed: int = 0) -> list[int]:
    return TOK.encode(text_of_length(n, seed))


def run(engine: Engine) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step().outputs:
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    return tokens


def test_repeated_prompt_hits_prefix_cache_in_tokens() -> None:
    engine = Engine(EngineConfig())
    p = prompt(1000)
    engine.add_request(SimRequest("a", p, SamplingParams(max_tokens=8)))
    run(engine)
    engine.add_request(SimRequest("b", p, SamplingParams(max_tokens=8)))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step().outputs
    assert outputs[-1].num_cached_tokens == 992  # 62 full blocks; the last token is recomputed
    assert engine.stats.prefix_cache_queries_total == 2000
    assert engine.stats.prefix_cache_hits_total == 992


def test_prompt_longer_than_context_is_refused_like_vllm() -> None:
    engine = Engine(EngineConfig(max_model_len=1024))
    with pytest.raises(RequestError, match="maximum context length is 1024 tokens"):
        engine.add_request(SimRequest("a", prompt(1000), SamplingParams(max_tokens=100)))
