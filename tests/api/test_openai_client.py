"""The official openai client through the gateway against real ``sluice sim`` engines."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator

import httpx
import openai
import pytest

from sluice.api.server import GatewayServer
from sluice.sim.launch import EngineFleet, start_engines
from tests.api.helpers import gateway_config

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MESSAGES = [{"role": "user", "content": "Say something about sluices."}]


@pytest.fixture(scope="module")
def engines() -> Iterator[EngineFleet]:
    with start_engines(2) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def gateway(
    engines: EngineFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    """The gateway with its default extensions (admission limits, audit ledger), auth off."""
    tmp = tmp_path_factory.mktemp("gateway")
    config = gateway_config(
        engines.urls,
        **{
            "server.debug_route_header": True,
            "admission.auth.enabled": False,
            "governance.database_url": f"sqlite:///{tmp}/sluice.db",
            "governance.ledger.spill_dir": str(tmp / "spill"),
        },
    )
    with GatewayServer(config) as server:
        yield server


def test_sync_chat_non_streaming_reports_usage(gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6)
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 6 and reply.usage.prompt_tokens > 0


def test_sync_chat_streaming_with_and_without_usage(gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=5, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    plain = list(
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, stream=True)
    )
    assert all(c.choices for c in plain)  # the usage chunk the gateway asked for is removed


def test_sync_completions_both_ways(gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert reply.choices[0].text and reply.usage is not None
    assert reply.usage.completion_tokens == 4
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_async_client_streaming_and_not(gateway: GatewayServer) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused")
    reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == (
        chunks[-1].usage.prompt_tokens + 3
    )


def test_models_lists_what_the_engines_serve(gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids


def test_requests_are_counted_on_both_engines_and_tokens_in_metrics(
    gateway: GatewayServer,
) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=2
    )
    assert raw.headers["x-sluice-route"].startswith(("e0", "e1"))
    assert raw.headers["x-request-id"]
    metrics = httpx.get(gateway.url + "/metrics").text
    assert re.search(r'sluice_requests_total\{endpoint="e0",model="[^"]+",status="200"\}', metrics)
    assert re.search(r'sluice_requests_total\{endpoint="e1",model="[^"]+",status="200"\}', metrics)
    assert 'sluice_tokens_total{kind="completion"' in metrics
    assert httpx.get(gateway.url + "/ready").status_code == 200
    assert httpx.get(gateway.url + "/health").json() == {"status": "alive"}


def _aborted(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=2).read().decode()
    match = re.search(
        r'vllm:request_success_total\{[^}]*finished_reason="abort"[^}]*\} (\S+)', text
    )
    assert match, "the simulator exports vllm:request_success_total{finished_reason=abort}"
    return float(match.group(1))


def test_client_disconnect_makes_the_engine_abort_within_100ms(
    gateway: GatewayServer, engines: EngineFleet
) -> None:
    before = [_aborted(u) for u in engines.urls]
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4000, "stream": True}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        next(response.iter_bytes())  # the stream is flowing: the engine is generating
    closed = time.monotonic()  # leaving the block closed the connection mid-stream
    while time.monotonic() - closed < 1.0:
        if sum(_aborted(u) for u in engines.urls) > sum(before):
            break
        time.sleep(0.005)
    elapsed = time.monotonic() - closed
    assert sum(_aborted(u) for u in engines.urls) == sum(before) + 1
    assert elapsed < 0.1, f"engine aborted {elapsed * 1000:.0f} ms after the client left"
