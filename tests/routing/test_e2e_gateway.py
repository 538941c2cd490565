"""End to end: gateway + simulated engines. A conversation's next turn lands on the engine that
cached its previous turns, and that engine reports the prefix-cache hit.

Approximate mode (the gateway learns from its own decisions, no tokenizer) and precise mode (the
engines' ZMQ KV events, the simulator's word tokenizer on both sides).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluice.api.gateway import Gateway
from sluice.api.server import GatewayServer
from sluice.config import load_config
from sluice.sim.launch import EngineFleet, start_engines
from sluice.sim.tokenizer import text_of_length

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CONVERSATIONS = 6


@pytest.fixture(scope="module")
def engines() -> Iterator[EngineFleet]:
    with start_engines(3, kv_events=True) as fleet:
        yield fleet


def _config(engines: EngineFleet, mode: str, **extra: Any) -> Any:
    endpoints = [
        {"url": url, "id": f"e{i}", "labels": {"kv_events": kv}}
        for i, (url, kv) in enumerate(zip(engines.urls, engines.kv_event_endpoints, strict=True))
    ]
    return load_config(
        env={},
        overrides={
            "server.port": 0,
            "server.debug_route_header": True,
            "health.probe_interval_s": 0.05,
            "scraper.interval_s": 0.05,
            "logging.requests": False,
            "routing.policy": "affinity_cost",  # the default
            "admission.enabled": False,  # routing is under test, not admission
            "routing.prefix_index.mode": mode,
            "endpoints": endpoints,
            **extra,
        },
    )


def _first_turn(i: int, tag: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": text_of_length(600, seed=f"{tag}-system-{i}")},
        {"role": "user", "content": text_of_length(200, seed=f"{tag}-user-{i}")},
    ]


async def _chat(client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int):
    reply = await client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": max_tokens},
    )
    assert reply.status_code == 200, reply.text
    endpoint = reply.headers["x-sluice-route"].split(";")[0]
    body = reply.json()
    return endpoint, body


async def _conversations_return_home(url: str, tag: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        # First turns at once, so load accounting spreads them over the engines.
        firsts = await asyncio.gather(
            *(_chat(client, _first_turn(i, tag), 40) for i in range(CONVERSATIONS))
        )
        homes = [endpoint for endpoint, _ in firsts]
        assert len(set(homes)) > 1, f"first turns did not spread: {homes}"
        for i, (home, body) in enumerate(firsts):
            answer = body["choices"][0]["message"]["content"]
            follow_up = [
                *_first_turn(i, tag),
                {"role": "assistant", "content": answer},
                {"role": "user", "content": text_of_length(50, seed=f"{tag}-next-{i}")},
            ]
            endpoint, reply = await _chat(client, follow_up, 4)
            assert endpoint == home, f"conversation {i}: went to {endpoint}, cached on {home}"
            cached = reply["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert cached >= 700, f"conversation {i}: engine reported {cached} cached tokens"


async def _load_returns_to_zero(server: GatewayServer) -> None:
    """Streamed, non-streamed and cancelled requests all give back the load they took,
    including the uncached prefill the cost model counted (``Decision.prefill_tokens``)."""
    body = {"model": MODEL, "messages": _first_turn(99, "load"), "max_tokens": 30}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        async with client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}
        ) as reply:
            async for _ in reply.aiter_bytes():
                pass
        async with client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True, "max_tokens": 400}
        ) as reply:
            async for _ in reply.aiter_bytes():
                break  # the client goes away mid-stream
    states = server.gateway.fleet.states
    for _ in range(200):
        if all(s.in_flight == 0 and s.in_flight_prefill_tokens == 0 for s in states):
            break
        await asyncio.sleep(0.02)
    assert [(s.in_flight, s.in_flight_prefill_tokens) for s in states] == [(0, 0)] * len(states)
    # ... and every prompt the free-queue model pinned at dispatch was released (approximate).
    policy = server.gateway.policy
    if getattr(policy, "free_queue", False):
        index = policy.index  # type: ignore[attr-defined]
        assert [index.pinned(s.id) for s in states] == [0] * len(states)
        assert index.stats().blocks > 0  # still cached
        # the scraper fed each engine's free blocks to the model (``Policy.on_scrape``)
        for s in states:
            free = index.idle_capacity(s.id)
            assert free is not None and 0 < free <= index.capacity(s.id) * 2


async def test_approximate_mode_sends_the_next_turn_home(engines: EngineFleet) -> None:
    with GatewayServer(_config(engines, "approximate")) as server:
        await _conversations_return_home(server.url, "approx")
        await _load_returns_to_zero(server)
        # No tokenizer: the rate moved from 4 toward the simulator's ~6.9 bytes per token.
        core = server.gateway.facts_core
        assert core is not None and core.bytes_per_token > 5.0
        assert server.gateway.policy.index.tokens_per_block == core.tokens_per_block < 16  # type: ignore[attr-defined]


async def test_the_policy_learns_each_answer_length_streamed_or_not(engines: EngineFleet) -> None:
    """The free-queue model counts each answer's blocks as idle cache once its request ends:
    the gateway hands the engine-reported completion tokens to ``Policy.on_complete``."""
    with GatewayServer(_config(engines, "approximate")) as server:
        policy = server.gateway.policy
        seen: list[int] = []
        complete = policy.on_complete

        def recording(*args: Any, output_tokens: int = 0) -> None:
            seen.append(output_tokens)
            complete(*args, output_tokens=output_tokens)

        policy.on_complete = recording  # type: ignore[method-assign]
        body = {"model": MODEL, "messages": _first_turn(7, "answers"), "max_tokens": 48}
        extra = {"ignore_eos": True}
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            reply = await client.post("/v1/chat/completions", json={**body, **extra})
            assert reply.json()["usage"]["completion_tokens"] == 48
            async with client.stream(
                "POST", "/v1/chat/completions", json={**body, **extra, "stream": True}
            ) as streamed:
                async for _ in streamed.aiter_bytes():
                    pass
        for _ in range(100):  # the stream's bookkeeping ends just after its last byte
            if len(seen) == 2:
                break
            await asyncio.sleep(0.02)
        assert seen == [48, 48]


async def test_precise_mode_mirrors_the_engines_kv_events(engines: EngineFleet) -> None:
    """Exact tokens from the engines' /tokenize, the index fed by their ZMQ KV events."""
    config = _config(engines, "precise", **{"routing.facts.remote_tokenize": True})
    gateway = Gateway(config)
    assert gateway.kv_subscriber is not None and gateway.engine_tokenizer is not None
    index = gateway.policy.index  # type: ignore[attr-defined]
    with GatewayServer(config, gateway) as server:
        await asyncio.sleep(0.3)  # let the SUB sockets join before the engines publish
        await _conversations_return_home(server.url, "precise")
        assert gateway.kv_subscriber.stats.events > 0
        assert gateway.kv_subscriber.stats.gaps == 0
        assert index.stats().blocks > 0
        assert gateway.engine_tokenizer.failures == 0
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            await _chat(client, _first_turn(0, "precise"), 2)  # a repeated prompt: no round trip
        assert gateway.engine_tokenizer.builder.cache.hits == 1
        metrics = httpx.get(server.url + "/metrics").text
        assert "sluice_prefix_index_blocks" in metrics
