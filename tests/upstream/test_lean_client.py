"""The lean HTTP/1.1 engine client against a scripted raw TCP server (exact bytes on the wire)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from sluice.upstream.lean import LeanClient, UpstreamError

Handler = Callable[["Conn"], Awaitable[None]]
OK_BODY = b'{"ok":true}'


@dataclass
class Conn:
    """One accepted connection, as the scripted handler sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def request(self) -> tuple[bytes, dict[bytes, bytes], bytes]:
        """The next request: (request line, lower-cased headers, body)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        line, *lines = head[:-4].split(b"\r\n")
        headers = {}
        for item in lines:
            name, _, value = item.partition(b":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        return line, headers, body

    async def reply(self, body: bytes = OK_BODY, extra: bytes = b"") -> None:
        self.writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
            % (extra, len(body), body)
        )
        await self.writer.drain()

    async def closed_by_peer(self, timeout: float = 2.0) -> bool:
        """True once the client has closed its end."""
        try:
            return await asyncio.wait_for(self.reader.read(), timeout) == b""
        except (TimeoutError, ConnectionError):
            return False


@dataclass
class Server:
    handler: Handler
    connections: list[Conn] = field(default_factory=list)
    url: str = ""

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(reader, writer)
        self.connections.append(conn)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.handler(conn)
        writer.close()


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    tcp = await asyncio.start_server(server._accept, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}"
    try:
        yield server
    finally:
        tcp.close()


async def keep_answering(conn: Conn) -> None:
    while True:
        await conn.request()
        await conn.reply()


async def test_keep_alive_reuses_one_connection_and_sends_the_request_exactly() -> None:
    seen = []

    async def handler(conn: Conn) -> None:
        while True:
            seen.append(await conn.request())
            await conn.reply()

    async with serving(handler) as server:
        client = LeanClient()
        for i in range(3):
            response = await client.post(server.url, "/v1/completions", b'{"a":1}', f"r{i}")
            assert response.status == 200 and response.content_type == b"application/json"
            assert await response.read() == OK_BODY
            response.release()
        client.close()
    assert len(server.connections) == 1
    line, headers, body = seen[2]
    assert line == b"POST /v1/completions HTTP/1.1"
    assert headers[b"x-request-id"] == b"r2" and headers[b"content-type"] == b"application/json"
    assert headers[b"host"] == server.url.removeprefix("http://").encode()
    assert body == b'{"a":1}'


async def test_url_path_prefix_is_kept() -> None:
    lines = []

    async def handler(conn: Conn) -> None:
        lines.append((await conn.request())[0])
        await conn.reply()

    async with serving(handler) as server:
        client = LeanClient()
        response = await client.post(server.url + "/engine/", "/v1/chat/completions", b"{}", "r")
        await response.read()
        response.release()
        client.close()
    assert lines == [b"POST /engine/v1/chat/completions HTTP/1.1"]


async def test_chunked_body_arrives_piece_by_piece() -> None:
    go_on = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n"
        )
        await conn.writer.drain()
        await go_on.wait()
        conn.writer.write(b"6\r\ndata:2\r\n0\r\n\r\n")
        await conn.writer.drain()
        await keep_answering(conn)

    async with serving(handler) as server:
        client = LeanClient()
        response = await client.post(server.url, "/v1/chat/completions", b"{}", "r")
        assert response.content_type == b"text/event-stream"
        assert await response.chunk() == b"data:1"  # delivered before the rest exists
        go_on.set()
        assert await response.chunk() == b"data:2"
        assert await response.chunk() == b""
        response.release()
        again = await client.post(server.url, "/v1/chat/completions", b"{}", "r")
        assert await again.read() == OK_BODY
        again.release()
        client.close()
    assert len(server.connections) == 1  # the chunked response left the connection reusable


async def test_connection_close_and_unframed_body_read_until_eof() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-the-end")
        await conn.writer.drain()
        conn.writer.close()

    async with serving(handler) as server:
        client = LeanClient()
        for _ in range(2):
            response = await client.post(server.url, "/v1/completions", b"{}", "r")
            assert await response.read() == b"until-the-end"
            response.release()
        client.close()
    assert len(server.connections) == 2  # not reused after Connection: close


async def test_engine_closing_mid_body_is_a_disconnected_error_after_the_first_bytes() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await conn.writer.drain()
        conn.writer.close()

    async with serving(handler) as server:
        client = LeanClient()
        response = await client.post(server.url, "/v1/completions", b"{}", "r")
        assert await response.chunk() == b"partial"
        with pytest.raises(UpstreamError) as err:
            await response.chunk()
        assert err.value.reason == "disconnected"
        response.close()
        whole = await client.post(server.url, "/v1/completions", b"{}", "r")
        with pytest.raises(UpstreamError, match="mid-body"):
            await whole.read()
        whole.close()
        client.close()


async def test_engine_closing_before_the_response_is_a_disconnected_error() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()

    async with serving(handler) as server:
        client = LeanClient()
        with pytest.raises(UpstreamError, match="before the response") as err:
            await client.post(server.url, "/v1/completions", b"{}", "r")
        assert err.value.reason == "disconnected"
        client.close()


async def test_idle_connection_closed_by_the_engine_is_replaced() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply()
        conn.writer.close()  # keep-alive advertised, then closed while idle

    async with serving(handler) as server:
        client = LeanClient()
        first = await client.post(server.url, "/v1/completions", b"{}", "r")
        await first.read()
        first.release()
        await asyncio.sleep(0.05)  # the client notices the close
        assert client.pool(server.url).idle == []
        second = await client.post(server.url, "/v1/completions", b"{}", "r")
        assert await second.read() == OK_BODY
        second.release()
        client.close()
    assert len(server.connections) == 2


async def test_reused_connection_closed_before_answering_is_retried_on_a_new_one() -> None:
    async def handler(conn: Conn) -> None:
        if len(server.connections) == 1:
            await conn.request()
            await conn.reply()
            await conn.request()  # the engine's idle timeout fires as this request arrives
            return
        await keep_answering(conn)

    async with serving(handler) as server:
        client = LeanClient()
        for _ in range(2):
            response = await client.post(server.url, "/v1/completions", b"{}", "r")
            assert await response.read() == OK_BODY
            response.release()
        client.close()
    assert len(server.connections) == 2


async def test_idle_read_timeout_before_headers_and_mid_body() -> None:
    async def silent(conn: Conn) -> None:
        await conn.request()
        await asyncio.sleep(5)

    async def stalls(conn: Conn) -> None:
        await conn.request()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        await conn.writer.drain()
        await asyncio.sleep(5)

    client = LeanClient(read_timeout=0.1)
    async with serving(silent) as server:
        with pytest.raises(UpstreamError) as err:
            await client.post(server.url, "/v1/completions", b"{}", "r")
        assert err.value.reason == "timeout"
        assert await server.connections[0].closed_by_peer()  # the engine sees the abort
    async with serving(stalls) as server:
        response = await client.post(server.url, "/v1/completions", b"{}", "r")
        assert await response.chunk() == b"first"
        with pytest.raises(UpstreamError) as err:
            await response.chunk()
        assert err.value.reason == "timeout"
        response.close()
        assert await server.connections[0].closed_by_peer()
    client.close()


async def test_idle_read_timeout_counts_from_each_wait_not_from_the_first() -> None:
    """One timer per connection, re-armed when it fires: a stream whose parts are each less
    than the timeout apart is never cut however long it runs, and a silence is timed from
    when its own wait began, on a reused connection too."""

    async def steady_then_silent(conn: Conn) -> None:
        await conn.request()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):  # 6 x 0.06 s: longer than the 0.15 s timeout in all
            await asyncio.sleep(0.06)
            conn.writer.write(b"1\r\nx\r\n")
        conn.writer.write(b"0\r\n\r\n")
        await conn.writer.drain()
        await conn.request()  # the second request on the same connection: never answered
        await asyncio.sleep(5)

    client = LeanClient(read_timeout=0.15)
    loop = asyncio.get_running_loop()
    async with serving(steady_then_silent) as server:
        response = await client.post(server.url, "/v1/completions", b"{}", "r")
        body = b""
        while chunk := await response.chunk():
            body += chunk
        assert body == b"x" * 6
        response.release()
        await asyncio.sleep(0.1)  # idle in the pool while the connection's timer is armed
        started = loop.time()
        with pytest.raises(UpstreamError) as err:
            await client.post(server.url, "/v1/completions", b"{}", "r2")
        waited = loop.time() - started
        assert err.value.reason == "timeout" and 0.14 <= waited < 0.5
        assert len(server.connections) == 1  # the second request reused the connection
    client.close()


async def test_connect_error_and_connect_timeout() -> None:
    async with serving(keep_answering) as server:
        url = server.url
    client = LeanClient()
    with pytest.raises(UpstreamError) as err:
        await client.post(url, "/v1/completions", b"{}", "r")  # nothing listens there now
    assert err.value.reason == "connect"
    # A non-routable address (TEST-NET-1) never answers the SYN: the connect timeout fires.
    slow = LeanClient(connect_timeout=0.05)
    with pytest.raises(UpstreamError) as err:
        await slow.post("http://192.0.2.1:9", "/v1/completions", b"{}", "r")
    assert err.value.reason in ("timeout", "connect")  # "connect" where the network refuses
    assert slow.pool("http://192.0.2.1:9").open == 0


async def test_cancelling_a_request_closes_its_connection() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await asyncio.sleep(5)

    async with serving(handler) as server:
        client = LeanClient()
        task = asyncio.create_task(client.post(server.url, "/v1/completions", b"{}", "r"))
        while not server.connections:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await server.connections[0].closed_by_peer()
        assert client.pool(server.url).open == 0
        client.close()


async def test_closing_a_stream_early_closes_the_connection() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        await conn.writer.drain()
        await asyncio.sleep(5)

    async with serving(handler) as server:
        client = LeanClient()
        response = await client.post(server.url, "/v1/completions", b"{}", "r")
        assert await response.chunk() == b"some"
        response.close()
        assert await server.connections[0].closed_by_peer()
        assert client.pool(server.url).open == 0 and client.pool(server.url).idle == []
        client.close()


async def test_pool_bound_makes_callers_wait_for_a_free_connection() -> None:
    release = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while True:
            await conn.request()
            await release.wait()
            await conn.reply()

    async with serving(handler) as server:
        client = LeanClient(limit_per_endpoint=1)

        async def one() -> bytes:
            response = await client.post(server.url, "/v1/completions", b"{}", "r")
            body = await response.read()
            response.release()
            return body

        tasks = [asyncio.create_task(one()) for _ in range(3)]
        await asyncio.sleep(0.1)
        pool = client.pool(server.url)
        assert pool.open == 1 and not any(t.done() for t in tasks)
        release.set()
        assert await asyncio.gather(*tasks) == [OK_BODY] * 3
        client.close()
    assert len(server.connections) == 1


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    release = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while True:
            await conn.request()
            await release.wait()
            await conn.reply()

    async with serving(handler) as server:
        client = LeanClient(limit_per_endpoint=1)
        first = asyncio.create_task(client.post(server.url, "/v1/completions", b"{}", "r"))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(client.post(server.url, "/v1/completions", b"{}", "r"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        release.set()
        response = await first
        await response.read()
        response.release()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        again = await client.post(server.url, "/v1/completions", b"{}", "r")
        assert await again.read() == OK_BODY
        again.release()
        assert client.pool(server.url).open == 1
        client.close()


async def test_invalid_http_is_a_payload_error() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await conn.writer.drain()
        await asyncio.sleep(1)

    async with serving(handler) as server:
        client = LeanClient()
        with pytest.raises(UpstreamError) as err:
            await client.post(server.url, "/v1/completions", b"{}", "r")
        assert err.value.reason == "payload"
        assert client.pool(server.url).open == 0
        client.close()


async def test_large_bodies_whole_and_slowly_streamed_arrive_intact() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: beyond the buffer that pauses reading

    async def handler(conn: Conn) -> None:
        while True:
            await conn.request()
            await conn.reply(big)

    async with serving(handler) as server:
        client = LeanClient()
        response = await client.post(server.url, "/v1/completions", b"{}", "r")
        assert await response.read() == big
        response.release()
        # A slow reader: reading from the engine pauses and resumes as the buffer drains.
        streamed = await client.post(server.url, "/v1/completions", b"{}", "r")
        parts = []
        while chunk := await streamed.chunk():
            parts.append(chunk)
            await asyncio.sleep(0.005)
        assert b"".join(parts) == big
        streamed.release()
        client.close()
    assert len(server.connections) == 1
