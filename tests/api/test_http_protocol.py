"""The held-head protocol: the same bytes as uvicorn's, the head never later than one loop turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from sluice.api.http_protocol import HeldHeadProtocol
from sluice.api.server import bind


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    headers = [(b"content-type", b"text/plain")]
    if path == "/whole":
        headers.append((b"content-length", b"5"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello", "more_body": False})
    elif path == "/slow":  # awaits between the head and the body
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(0.5)
        await send({"type": "http.response.body", "body": b"late", "more_body": False})
    elif path == "/fail":  # fails after the head
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(0.05)
        raise RuntimeError("boom")


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[int]:
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(_app, http=HeldHeadProtocol, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _request(port: int, method: str, path: str) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".encode())
    return reader, writer


async def test_head_and_body_arrive_intact() -> None:
    async with _server() as port:
        reader, writer = await _request(port, "GET", "/whole")
        data = await reader.read()
        writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 5\r\n" in data and data.endswith(b"\r\n\r\nhello")


async def test_head_is_not_held_while_the_app_waits() -> None:
    async with _server() as port:
        reader, writer = await _request(port, "GET", "/slow")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
        rest = await reader.read()
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
    assert rest == b"4\r\nlate\r\n0\r\n\r\n"


async def test_head_of_a_failing_app_still_goes_out() -> None:
    async with _server() as port:
        reader, writer = await _request(port, "GET", "/fail")
        data = await reader.read()
        writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n")


async def test_head_request_gets_its_head() -> None:
    async with _server() as port:
        reader, writer = await _request(port, "HEAD", "/whole")
        data = await reader.read()
        writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 5\r\n" in data
    assert data.endswith(b"\r\n\r\n") and b"hello" not in data
