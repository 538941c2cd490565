"""The completions routes without ASGI (``LeanRouteProtocol``): which requests take the lean
path, and that they get the same answers as through ASGI (framing, keep-alive, pipelining,
disconnects, failing handlers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from sluice.api.app import build_app
from sluice.api.completions import CompletionsHandler
from sluice.api.gateway import Gateway
from sluice.api.http_protocol import Exchange, LeanRouteProtocol
from sluice.api.server import bind, uvicorn_config
from tests.api.engine_double import MODEL, EngineDouble
from tests.api.helpers import gateway_config, running_gateway

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
BODY = orjson.dumps(CHAT)


@pytest.fixture
async def engine() -> AsyncIterator[EngineDouble]:
    double = await EngineDouble().start()
    yield double
    await double.stop()


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which entry each completions request came in by: "lean" or "asgi"."""
    seen: list[str] = []
    lean, asgi = CompletionsHandler.serve_exchange, CompletionsHandler.__call__

    async def counted_lean(self: CompletionsHandler, exchange: Exchange) -> None:
        seen.append("lean")
        await lean(self, exchange)

    async def counted_asgi(self: CompletionsHandler, *args: Any) -> None:
        seen.append("asgi")
        await asgi(self, *args)

    monkeypatch.setattr(CompletionsHandler, "serve_exchange", counted_lean)
    monkeypatch.setattr(CompletionsHandler, "__call__", counted_asgi)
    return seen


def _post(path: str = "/v1/chat/completions", body: bytes = BODY, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length or chunked) from ``reader``."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    assert headers.get("transfer-encoding") == "chunked"
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return status, headers, body
        body += data[:-2]


async def test_plain_posts_take_the_lean_path_on_one_keep_alive_connection(
    engine: EngineDouble, paths: list[str]
) -> None:
    async with running_gateway(gateway_config([engine.url])) as (url, _):
        reader, writer = await _connect(url)
        for i in range(3):
            writer.write(_post(extra=f"x-request-id: r{i}\r\n"))
            status, headers, body = await _read_response(reader)
            assert status == 200 and headers["x-request-id"] == f"r{i}"
            assert headers["content-type"].startswith("application/json") and "date" in headers
            assert orjson.loads(body)["usage"]["prompt_tokens"] == 7
        writer.close()
    assert paths == ["lean"] * 3


async def test_streams_take_the_lean_path_with_chunked_framing(
    engine: EngineDouble, paths: list[str]
) -> None:
    async with running_gateway(gateway_config([engine.url])) as (url, _):
        reader, writer = await _connect(url)
        writer.write(_post(body=orjson.dumps({**CHAT, "stream": True})))
        status, headers, body = await _read_response(reader)
        writer.close()
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.split(b"\n\n") if e]
    assert len(events) == 4 and events[-1] == b"data: [DONE]"  # 3 tokens; usage chunk removed
    assert paths == ["lean"]


async def test_pipelined_requests_are_answered_in_order(
    engine: EngineDouble, paths: list[str]
) -> None:
    async with running_gateway(gateway_config([engine.url])) as (url, _):
        reader, writer = await _connect(url)
        writer.write(b"".join(_post(extra=f"x-request-id: p{i}\r\n") for i in range(3)))
        ids = [(await _read_response(reader))[1]["x-request-id"] for _ in range(3)]
        writer.close()
    assert ids == ["p0", "p1", "p2"]
    assert paths[0] == "lean" and len(paths) == 3  # the ones queued behind it go through ASGI


async def test_unusual_requests_go_through_asgi_with_the_same_answers(
    engine: EngineDouble, paths: list[str]
) -> None:
    config = gateway_config([engine.url], **{"server.max_body_bytes": 4096})
    async with running_gateway(config) as (url, _), httpx.AsyncClient() as client:
        chat = url + "/v1/chat/completions"
        assert (await client.post(chat + "?x=1", json=CHAT)).status_code == 200

        async def chunks() -> AsyncIterator[bytes]:
            yield BODY  # no Content-Length: a chunked request body

        assert (await client.post(chat, content=chunks())).status_code == 200
        too_big = await client.post(chat, content=b"{" + b" " * 5000 + b"}")
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == 413
        assert (await client.get(chat)).status_code == 405
        bad = await client.post(url + "/v1/completions", json={"model": MODEL})
        assert bad.status_code == 400
    # 405 is answered by the app before the handler; the bad /v1/completions body was lean.
    assert paths == ["asgi", "asgi", "asgi", "lean"]


async def test_http_1_0_goes_through_asgi_and_closes(
    engine: EngineDouble, paths: list[str]
) -> None:
    async with running_gateway(gateway_config([engine.url])) as (url, _):
        reader, writer = await _connect(url)
        writer.write(_post().replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        data = await asyncio.wait_for(reader.read(), 5)  # read to the close
        writer.close()
    assert data.startswith(b"HTTP/1.1 200") and b"connection: close" in data
    assert paths == ["asgi"]


async def test_connection_close_is_honoured_on_the_lean_path(
    engine: EngineDouble, paths: list[str]
) -> None:
    async with running_gateway(gateway_config([engine.url])) as (url, _):
        reader, writer = await _connect(url)
        writer.write(_post(extra="connection: close\r\n"))
        status, headers, _ = await _read_response(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the answer
        writer.close()
    assert status == 200 and headers["connection"] == "close"
    assert paths == ["lean"]


async def test_a_disconnect_cancels_a_lean_request_at_once(
    engine: EngineDouble, paths: list[str]
) -> None:
    engine.mode = "hang"
    settled: list[Any] = []

    async def settle(ctx: Any) -> None:
        settled.append(ctx)

    async with running_gateway(gateway_config([engine.url])) as (url, gw):
        gw.hooks.settle.append(settle)
        _, writer = await _connect(url)
        writer.write(_post())
        for _ in range(200):
            if engine.running:
                break
            await asyncio.sleep(0.005)
        writer.close()
        for _ in range(20):  # within 100 ms
            if engine.disconnects and settled:
                break
            await asyncio.sleep(0.005)
        assert engine.disconnects == 1 and engine.running == 0
        assert settled[0].status == 499 and settled[0].outcome == "cancelled"
        assert gw.metrics.in_flight == 0 and gw.fleet.states[0].in_flight == 0
    assert paths == ["lean"]


# -- the protocol with stand-in routes ------------------------------------------------------------


class _Route:
    max_body_bytes = 1000

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.bodies: list[bytes] = []

    async def serve_exchange(self, exchange: Exchange) -> None:
        self.bodies.append(exchange.body)
        if self.behaviour == "raise":
            raise RuntimeError("boom")
        if self.behaviour == "raise_after_head":
            await exchange.send({"type": "http.response.start", "status": 200, "headers": []})
            await exchange.send({"type": "http.response.body", "body": b"x", "more_body": True})
            raise RuntimeError("boom")
        if self.behaviour == "incomplete":
            return
        if self.behaviour == "bad_header":  # a value that would split the response
            headers = [(b"x-a", b"1\r\nset-cookie: x=1")]
            await exchange.send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.behaviour == "slow":
            await asyncio.sleep(0.3)
        await exchange.send(
            {"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]}
        )
        for part in (b"", b"ab", b"cd"):
            await exchange.send({"type": "http.response.body", "body": part, "more_body": True})
        await exchange.send({"type": "http.response.body", "body": b"", "more_body": False})


@contextlib.asynccontextmanager
async def _server(
    route: _Route, keep_alive_s: float = 5
) -> AsyncIterator[tuple[asyncio.StreamReader, Any]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the lean route went through ASGI")

    app.hot_routes = {b"/hot": route}  # type: ignore[attr-defined]
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(
        app,
        http=LeanRouteProtocol,
        log_level="critical",
        lifespan="off",
        proxy_headers=False,
        timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
    try:
        yield reader, writer
    finally:
        writer.close()
        server.should_exit = True
        await task
        sock.close()


async def test_a_body_in_several_packets_reaches_the_route_whole() -> None:
    route = _Route("ok")
    async with _server(route) as (reader, writer):
        request = _post("/hot", b"0123456789" * 50)
        for i in range(0, len(request), 100):
            writer.write(request[i : i + 100])
            await writer.drain()
            await asyncio.sleep(0.005)
        status, headers, body = await _read_response(reader)
    assert status == 201 and headers["x-a"] == "1" and body == b"abcd"
    assert route.bodies == [b"0123456789" * 50]


async def test_a_wrapped_app_keeps_every_request_on_asgi() -> None:
    """Middleware uvicorn puts around the app (here: proxy headers) must see every request."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app.hot_routes = {b"/hot": _Route("raise")}  # type: ignore[attr-defined]
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(app, http=LeanRouteProtocol, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
    writer.write(_post("/hot"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    server.should_exit = True
    await task
    sock.close()
    assert head.startswith(b"HTTP/1.1 204")


async def test_a_failing_route_gets_a_500_and_the_connection_closes() -> None:
    async with _server(_Route("raise")) as (reader, writer):
        writer.write(_post("/hot"))
        status, headers, body = await _read_response(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert status == 500 and body == b"Internal Server Error" and headers["connection"] == "close"


@pytest.mark.parametrize("behaviour", ["raise_after_head", "incomplete", "bad_header"])
async def test_a_route_that_fails_mid_answer_has_its_connection_closed(behaviour: str) -> None:
    async with _server(_Route(behaviour)) as (reader, writer):
        writer.write(_post("/hot"))
        data = await asyncio.wait_for(reader.read(), 5)  # to the close
    if behaviour == "raise_after_head":
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"1\r\nx\r\n")
    else:  # nothing was written (the bad header never reaches the wire)
        assert data == b""


async def test_keep_alive_closes_an_idle_connection_after_the_timeout_only() -> None:
    """One keep-alive timer per connection (not one per response): a request that runs past
    the timeout is not cut, and the connection closes once idle for the whole timeout."""
    loop = asyncio.get_running_loop()
    async with _server(_Route("slow"), keep_alive_s=0.2) as (reader, writer):
        for _ in range(2):  # each 0.3 s: the timer fires while the connection is busy
            writer.write(_post("/hot"))
            status, _, body = await _read_response(reader)
            assert status == 201 and body == b"abcd"
        await asyncio.sleep(0.1)
        writer.write(_post("/hot"))  # idle for half the timeout: still open
        assert (await _read_response(reader))[0] == 201
        idle_from = loop.time()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.19 <= loop.time() - idle_from < 0.6


async def test_shutdown_lets_a_lean_stream_finish_then_closes_its_connection(
    engine: EngineDouble, paths: list[str]
) -> None:
    """uvicorn's graceful shutdown sees the exchange as the connection's cycle: the stream in
    flight completes, the connection closes after it, then the server exits."""
    engine.chunks, engine.chunk_delay = 5, 0.05
    config = gateway_config([engine.url])
    gateway = Gateway(config, extensions=False)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(build_app(gateway), config))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
    writer.write(_post(body=orjson.dumps({**CHAT, "stream": True})))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # the stream has begun
    server.should_exit = True
    rest = await asyncio.wait_for(reader.read(), 5)  # to the close
    await asyncio.wait_for(serving, 5)
    writer.close()
    sock.close()
    assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert rest.count(b'"content":"x"') == 5
    assert paths == ["lean"]
