"""Failure paths against a controllable engine double (see engine_double.py for why a double)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import openai
import orjson
import pytest

from tests.api.engine_double import MODEL, EngineDouble
from tests.api.helpers import gateway_config, running_gateway

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


@pytest.fixture
async def doubles() -> AsyncIterator[list[EngineDouble]]:
    engines = [await EngineDouble(name=f"d{i}").start() for i in range(2)]
    yield engines
    for engine in engines:
        await engine.stop()


async def test_503_before_first_byte_is_retried_on_another_endpoint(
    doubles: list[EngineDouble],
) -> None:
    doubles[0].mode = "status"
    async with running_gateway(gateway_config([d.url for d in doubles])) as (url, gw):
        async with httpx.AsyncClient() as client:
            response = await client.post(url + "/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 3
        assert len(doubles[0].requests) == 1 and len(doubles[1].requests) == 1
        metrics = gw.metrics.render().decode()
        assert 'sluice_upstream_retries_total{endpoint="e0",reason="status_503"} 1.0' in metrics
        assert all(s.in_flight == 0 for s in gw.fleet.states)


async def test_connect_error_is_retried_on_another_endpoint(doubles: list[EngineDouble]) -> None:
    dead = EngineDouble()
    await dead.start()
    dead_url = dead.url
    await dead.stop()  # nothing listens there any more
    config = gateway_config([dead_url, doubles[0].url])
    async with running_gateway(config) as (url, gw):
        gw.fleet.states[0].healthy = True  # as if the startup probe had not noticed yet
        async with httpx.AsyncClient() as client:
            response = await client.post(url + "/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        assert len(doubles[0].requests) == 1


async def test_death_before_first_byte_is_retried_for_streams(
    doubles: list[EngineDouble],
) -> None:
    doubles[0].mode = "die_before_first_byte"
    async with running_gateway(gateway_config([d.url for d in doubles])) as (url, _):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        stream = await client.chat.completions.create(**CHAT, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "xxx"
        assert len(doubles[1].requests) == 1


async def test_no_retry_after_first_byte_the_client_sees_an_error_event(
    doubles: list[EngineDouble],
) -> None:
    for double in doubles:
        double.mode = "die_mid_stream"
    async with running_gateway(gateway_config([d.url for d in doubles])) as (url, gw):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        stream = await client.chat.completions.create(**CHAT, stream=True)
        received = []
        with pytest.raises(openai.APIError, match="failed while streaming"):
            async for chunk in stream:
                received.append(chunk)
        assert len(received) == 1  # the chunk sent before the engine died
        assert sum(len(d.requests) for d in doubles) == 1  # never retried
        assert all(s.in_flight == 0 and s.in_flight_prefill_tokens == 0 for s in gw.fleet.states)


async def test_raw_stream_ends_with_error_event_then_closes(doubles: list[EngineDouble]) -> None:
    doubles[0].mode = "die_mid_stream"
    config = gateway_config([doubles[0].url])
    async with running_gateway(config) as (url, _), httpx.AsyncClient() as client:
        response = await client.post(url + "/v1/chat/completions", json={**CHAT, "stream": True})
    events = [e for e in response.content.split(b"\n\n") if e]
    assert response.status_code == 200
    assert orjson.loads(events[-2][len(b"data: ") :])["error"]["code"] == 502
    assert events[-1] == b"data: [DONE]"


async def test_non_stream_upstream_failure_is_a_502_with_an_openai_body(
    doubles: list[EngineDouble],
) -> None:
    for double in doubles:
        double.mode = "die_before_first_byte"
    config = gateway_config([d.url for d in doubles])
    async with running_gateway(config) as (url, _), httpx.AsyncClient() as client:
        response = await client.post(url + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert sum(len(d.requests) for d in doubles) == 2  # each endpoint tried once


async def test_engine_4xx_passes_through_unchanged(doubles: list[EngineDouble]) -> None:
    doubles[0].mode = "status"
    doubles[0].status = 400
    doubles[0].error_body = b'{"error":{"message":"too long","type":"BadRequestError","code":400}}'
    config = gateway_config([doubles[0].url])
    async with running_gateway(config) as (url, _), httpx.AsyncClient() as client:
        response = await client.post(url + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 400
    assert response.content == doubles[0].error_body


async def test_usage_chunk_is_requested_and_removed_unless_the_client_asked(
    doubles: list[EngineDouble],
) -> None:
    async with running_gateway(gateway_config([doubles[0].url])) as (url, gw):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        stream = await client.chat.completions.create(**CHAT, stream=True)
        chunks = [c async for c in stream]
        assert all(c.choices for c in chunks)  # no usage-only chunk
        assert doubles[0].requests[-1]["stream_options"] == {"include_usage": True}
        stream = await client.chat.completions.create(
            **CHAT, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 7
        metrics = gw.metrics.render().decode()
        # Both streams' tokens were counted, asked for or not.
        assert f'sluice_tokens_total{{kind="completion",model="{MODEL}"}} 6.0' in metrics


async def test_client_disconnect_cancels_the_upstream_request(doubles: list[EngineDouble]) -> None:
    doubles[0].mode = "hang"
    settled = []

    async def settle(ctx: object) -> None:
        settled.append(ctx)

    async with running_gateway(gateway_config([doubles[0].url])) as (url, gw):
        gw.hooks.settle.append(settle)
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(url + "/v1/chat/completions", json=CHAT, timeout=0.3)
        for _ in range(100):
            if doubles[0].disconnects:
                break
            await asyncio.sleep(0.01)
        assert doubles[0].disconnects == 1 and doubles[0].running == 0
        for _ in range(100):
            if settled:
                break
            await asyncio.sleep(0.01)
        assert len(settled) == 1
        assert settled[0].status == 499 and settled[0].outcome == "cancelled"  # type: ignore[attr-defined]
        assert gw.fleet.states[0].in_flight == 0


async def test_failing_endpoint_is_ejected_and_comes_back_after_recovery(
    doubles: list[EngineDouble],
) -> None:
    doubles[0].mode = "status"
    doubles[0].healthy = False
    config = gateway_config([d.url for d in doubles], **{"health.failures_to_eject": 2})
    async with running_gateway(config) as (url, gw):
        e0 = gw.fleet.states[0]
        e0.healthy, e0.ejected_until = True, 0.0  # start in: eject it through traffic
        async with httpx.AsyncClient() as client:
            for _ in range(4):
                response = await client.post(url + "/v1/chat/completions", json=CHAT)
                assert response.status_code == 200  # retried on e1 every time
            assert not e0.available(gw.clock())
            assert 'sluice_endpoint_ejected{endpoint="e0"} 1.0' in gw.metrics.render().decode()
            seen = len(doubles[0].requests)
            for _ in range(4):
                await client.post(url + "/v1/chat/completions", json=CHAT)
            assert len(doubles[0].requests) == seen  # no traffic while ejected
            doubles[0].mode, doubles[0].healthy = "ok", True
            for _ in range(200):
                if e0.available(gw.clock()):
                    break
                await asyncio.sleep(0.02)
            assert e0.available(gw.clock())
            for _ in range(4):
                await client.post(url + "/v1/chat/completions", json=CHAT)
            assert len(doubles[0].requests) > seen  # back in rotation


async def test_scraper_reads_vllm_metrics_into_endpoint_state(
    doubles: list[EngineDouble],
) -> None:
    async with running_gateway(gateway_config([doubles[0].url])) as (_, gw):
        state = gw.fleet.states[0]
        for _ in range(100):
            if state.num_blocks:
                break
            await asyncio.sleep(0.02)
        assert (state.waiting, state.kv_usage, state.block_size) == (2, 0.25, 32)
        assert state.num_blocks == 4096
        assert state.loras == frozenset({"sql", "chat"}) and state.max_loras == 4


async def test_idle_read_timeout_retries_a_silent_engine_before_the_first_byte(
    doubles: list[EngineDouble],
) -> None:
    doubles[0].mode = "hang"
    config = gateway_config([d.url for d in doubles], **{"upstream.idle_read_timeout_s": 0.3})
    async with running_gateway(config) as (url, gw), httpx.AsyncClient() as client:
        response = await client.post(url + "/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        assert len(doubles[1].requests) == 1
        metrics = gw.metrics.render().decode()
        assert 'sluice_upstream_retries_total{endpoint="e0",reason="timeout"} 1.0' in metrics


async def test_idle_read_timeout_mid_stream_ends_the_stream_with_an_error_event(
    doubles: list[EngineDouble],
) -> None:
    doubles[0].mode = "stall_mid_stream"
    config = gateway_config([doubles[0].url], **{"upstream.idle_read_timeout_s": 0.3})
    async with running_gateway(config) as (url, gw), httpx.AsyncClient() as client:
        response = await client.post(url + "/v1/chat/completions", json={**CHAT, "stream": True})
        events = [e for e in response.content.split(b"\n\n") if e]
        assert b'"content":"x"' in events[0]  # the chunk sent before the silence
        assert b'"error"' in events[-2] and events[-1] == b"data: [DONE]"
        for _ in range(100):  # the gateway closed the upstream connection
            if doubles[0].disconnects:
                break
            await asyncio.sleep(0.01)
        assert doubles[0].disconnects == 1
        assert gw.fleet.states[0].in_flight == 0


async def test_load_accounting_balances_under_concurrent_mixed_outcomes(
    doubles: list[EngineDouble],
) -> None:
    """Success, retried 503s, mid-stream deaths and client cancellations, all at once."""
    doubles[0].mode = "die_mid_stream"
    doubles[1].chunk_delay = 0.01
    config = gateway_config([d.url for d in doubles], **{"health.failures_to_eject": 1000})
    async with running_gateway(config) as (url, gw), httpx.AsyncClient() as client:

        async def one(i: int) -> None:
            body = {**CHAT, "stream": i % 2 == 0}
            # A client that gives up (timeout): the gateway cancels its upstream request.
            with contextlib.suppress(httpx.TimeoutException):
                await client.post(url + "/v1/chat/completions", json=body, timeout=0.02 + i * 0.002)

        await asyncio.gather(*(one(i) for i in range(40)))
        for _ in range(100):
            if gw.metrics.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert gw.metrics.in_flight == 0
        for state in gw.fleet.states:
            assert state.in_flight == 0 and state.in_flight_prefill_tokens == 0
