"""Through the gateway: a full pool whose rule says "wait" holds the request until an endpoint
frees up (or answers 503 + Retry-After once ``wait_max_s`` is spent); "spill" goes elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluice.api.server import GatewayServer
from sluice.config import load_config
from sluice.sim.launch import EngineFleet, start_engines
from sluice.sim.tokenizer import text_of_length

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def engines() -> Iterator[EngineFleet]:
    with start_engines(2) as fleet:
        yield fleet


def _config(engines: EngineFleet, rule: dict[str, Any], wait_max_s: float) -> Any:
    return load_config(
        env={},
        overrides={
            "server.port": 0,
            "server.debug_route_header": True,
            "health.probe_interval_s": 0.05,
            "logging.requests": False,
            "admission.enabled": False,
            "routing.pools": [rule],
            # "full" = one request in flight: easy to reach on purpose.
            "routing.full_when": {"max_in_flight": 1, "max_waiting": 0, "kv_usage": 1.0},
            "routing.wait_retry_after_s": 0.05,
            "routing.wait_max_s": wait_max_s,
            "endpoints": [
                {"url": engines.urls[0], "id": "small", "pool": "chat"},
                {"url": engines.urls[1], "id": "spare", "pool": "spare"},
            ],
        },
    )


async def _two_at_once(url: str) -> list[httpx.Response]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text_of_length(50, seed="pool")}],
        "max_tokens": 60,
    }
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        first = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        await asyncio.sleep(0.05)  # the first is in flight: the pool is full
        second = await client.post("/v1/chat/completions", json=body)
        return [await first, second]


async def test_wait_holds_the_request_until_the_pool_has_room(engines: EngineFleet) -> None:
    rule = {"pool": "chat", "when_full": "wait"}
    with GatewayServer(_config(engines, rule, wait_max_s=30)) as server:
        replies = await _two_at_once(server.url)
    assert [r.status_code for r in replies] == [200, 200]
    assert all(r.headers["x-sluice-route"].startswith("small;") for r in replies)


async def test_wait_gives_up_after_wait_max(engines: EngineFleet) -> None:
    rule = {"pool": "chat", "when_full": "wait"}
    with GatewayServer(_config(engines, rule, wait_max_s=0)) as server:
        replies = await _two_at_once(server.url)
    assert [r.status_code for r in replies] == [200, 503]
    assert replies[1].headers["retry-after"] == "1"


async def test_spill_sends_the_overflow_to_the_next_pool(engines: EngineFleet) -> None:
    rule = {"pool": "chat", "when_full": "spill", "spill_to": ["spare"]}
    with GatewayServer(_config(engines, rule, wait_max_s=0)) as server:
        replies = await _two_at_once(server.url)
    assert [r.status_code for r in replies] == [200, 200]
    routes = [r.headers["x-sluice-route"] for r in replies]
    assert routes[0].startswith("small;") and routes[1].startswith("spare;")
    assert "spilled from chat" in routes[1]
