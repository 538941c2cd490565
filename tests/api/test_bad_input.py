"""Each bad input gets its status and an OpenAI-style error body, never a stack trace."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.api.engine_double import MODEL, EngineDouble
from tests.api.helpers import gateway_config, running_gateway

CHAT = "/v1/chat/completions"


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, EngineDouble]]:
    engine = await EngineDouble().start()
    config = gateway_config([engine.url], **{"server.max_body_bytes": 4096})
    async with running_gateway(config) as (url, _):
        yield url, engine
    await engine.stop()


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    assert "Traceback" not in response.text
    return error


@pytest.mark.parametrize(
    ("path", "content", "fragment"),
    [
        (CHAT, b"{not json", "not valid JSON"),
        (CHAT, b"", "empty"),
        (CHAT, b"[1, 2]", "JSON object"),
        (CHAT, b'{"messages": [{"role": "user", "content": "hi"}]}', "'model'"),
        (CHAT, b'{"model": "double-model"}', "'messages'"),
        (CHAT, b'{"model": "double-model", "messages": ["hi"]}', "role"),
        ("/v1/completions", b'{"model": "double-model"}', "'prompt'"),
        (CHAT, b'{"model": "double-model", "messages": [{"role": "user"}], "stream": "yes"}', ""),
    ],
)
async def test_malformed_or_incomplete_body_is_400(
    gateway: tuple[str, EngineDouble], path: str, content: bytes, fragment: str
) -> None:
    url, engine = gateway
    async with httpx.AsyncClient() as client:
        response = await client.post(url + path, content=content)
    error = assert_openai_error(response, 400)
    assert fragment in str(error["message"])
    assert engine.requests == []


async def test_unknown_model_is_404(gateway: tuple[str, EngineDouble]) -> None:
    url, _ = gateway
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as client:
        response = await client.post(url + CHAT, json=body)
    error = assert_openai_error(response, 404)
    assert error["param"] == "model"


async def test_body_over_the_limit_is_413(gateway: tuple[str, EngineDouble]) -> None:
    url, engine = gateway
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
    async with httpx.AsyncClient() as client:
        response = await client.post(url + CHAT, json=body)

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b" " * 1000

        streamed = await client.post(url + CHAT, content=chunked())
    assert_openai_error(response, 413)
    assert_openai_error(streamed, 413)
    assert engine.requests == []


async def test_no_healthy_endpoint_is_503_with_retry_after(
    gateway: tuple[str, EngineDouble],
) -> None:
    url, engine = gateway
    engine.healthy = False
    engine.mode = "status"  # the passive detector sees 503s, the prober sees /health fail
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as client:
        for _ in range(5):
            response = await client.post(url + CHAT, json=body)
            if response.status_code == 503 and "retry-after" in response.headers:
                break
        assert_openai_error(response, 503)
        assert int(response.headers["retry-after"]) >= 1
        ready = await client.get(url + "/ready")
        assert ready.status_code == 503 and "retry-after" in ready.headers


async def test_wrong_method_and_unknown_path_get_openai_errors(
    gateway: tuple[str, EngineDouble],
) -> None:
    url, _ = gateway
    async with httpx.AsyncClient() as client:
        assert_openai_error(await client.get(url + CHAT), 405)
        assert_openai_error(await client.get(url + "/v1/nothing-here"), 404)


async def test_request_id_is_accepted_or_generated_and_returned(
    gateway: tuple[str, EngineDouble],
) -> None:
    url, _ = gateway
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as client:
        given = await client.post(url + CHAT, json=body, headers={"x-request-id": "abc-123"})
        generated = await client.post(url + CHAT, json=body)
        bad = await client.post(url + CHAT, content=b"{", headers={"x-request-id": "r-9"})
    assert given.headers["x-request-id"] == "abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    assert bad.headers["x-request-id"] == "r-9"
