"""A lean HTTP/1.1 client for the hot path: ``asyncio.Protocol`` + ``httptools``, keep-alive pools.

Why not aiohttp here: the proxy needs one thing (POST a body, get the status, the content type and
the body bytes as they arrive), and aiohttp's general client cost about 80 µs of CPU per request
for it against about 20 µs for this one (``bench/results/gateway.md``). aiohttp stays for the
control traffic (probes, ``/metrics`` scrapes, adapter loads).

* One ``_Pool`` per endpoint base URL: idle connections reused most-recent-first, at most
  ``limit`` open (idle + busy + connecting); callers beyond that wait for a slot.
* Bodies with Content-Length, chunked transfer encoding, or (no length at all) up to the close.
* Timeouts: connect, and idle read (the longest silence while waiting for the engine).
* Errors are ``UpstreamError`` with a short ``reason`` (connect, timeout, disconnected, payload);
  the caller knows whether it had received a byte, so it can tell "before" from "after".
* ``close()`` closes the connection at once: the engine sees the disconnect and aborts the
  request. Only a response read to its end, on a keep-alive connection, goes back to the pool.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from urllib.parse import urlsplit

import httptools


class UpstreamError(Exception):
    """The engine could not be reached, or the connection failed; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# Unread body bytes above which reading from the engine pauses until the proxy catches up.
_MAX_BUFFER = 1 << 18
_CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"


class _Connection(asyncio.Protocol):
    """One TCP connection and the state of the response being read on it (one at a time)."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.counted = True  # holds one of the pool's ``limit`` slots
        self.idle_since = 0.0
        self.reused = False  # taken from the idle list (it has served a request before)
        # The idle-read timeout: when the current wait began, and the connection's one timer.
        self.wait_since = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.active = False
        self.status = 0
        self.content_type: bytes | None = None
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.framed = False  # Content-Length or chunked: the end is known without a close
        self.error: UpstreamError | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active:
            # Bytes nobody asked for (the engine misbehaving): this connection is not reusable.
            self.lost = True
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("payload", f"invalid HTTP response: {exc}"))
            self.lost = True
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.active:
            self.pool.forget(self)  # an idle connection the engine closed
            return
        if self.complete:
            return
        if self.headers_done and not self.framed:
            # No Content-Length and not chunked: the body runs until the close.
            self.complete = True
            self._wake()
            return
        where = "mid-body" if self.headers_done else "before the response"
        self._fail(UpstreamError("disconnected", f"engine closed the connection {where}"))

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == _CONTENT_TYPE:
            self.content_type = value
        elif name == _CONTENT_LENGTH or (
            name == _TRANSFER_ENCODING and b"chunked" in value.lower()
        ):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        if self.status in (204, 304) or 100 <= self.status < 200:
            self.framed = True  # no body by definition
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _MAX_BUFFER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- waiting ------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    async def wait(self) -> None:
        """Until the engine sends something (or fails), at most the idle-read timeout."""
        if self.error is not None:
            raise self.error
        waiter = self.waiter = self.loop.create_future()
        timeout = self.pool.read_timeout
        if timeout is not None:
            # Not a timer per wait (one created and cancelled per request): the connection
            # keeps one armed, which checks when it fires whether the current wait is overdue.
            self.wait_since = self.loop.time()
            if self.timer is None:
                self.timer = self.loop.call_later(timeout, self._check_timeout)
        try:
            await waiter
        finally:
            self.waiter = None

    def _check_timeout(self) -> None:
        self.timer = None
        timeout = self.pool.read_timeout
        if self.waiter is None or self.waiter.done() or timeout is None or self.lost:
            return  # not waiting: the next wait arms the timer again
        left = self.wait_since + timeout - self.loop.time()
        if left <= 0:
            self._fail(UpstreamError("timeout", f"engine silent for {timeout}s"))
        else:
            self.timer = self.loop.call_later(left, self._check_timeout)

    def take(self) -> bytes:
        """Every body byte received so far (maybe b"")."""
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    # -- lifecycle ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.active = True
        self.transport.write(data)

    def release(self) -> None:
        """Back to the pool if the response was read to its end on a keep-alive connection."""
        if self.complete and self.keep_alive and not self.lost and not self.chunks:
            self._reset()
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.lost = True
        self.pool.forget(self)


class UpstreamResponse:
    """An engine's answer: ``status`` and ``content_type`` now, the body through ``read`` (whole)
    or ``chunk`` (what has arrived; b"" at the end). Finish with ``release`` or ``close``."""

    __slots__ = ("_conn", "_done", "content_type", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._done = False
        self.status = conn.status
        self.content_type = conn.content_type

    @property
    def finished(self) -> bool:
        """The whole body has arrived and been taken: ``chunk`` would return b"" now."""
        return self._conn.complete and not self._conn.chunks

    async def chunk(self) -> bytes:
        conn = self._conn
        while True:
            data = conn.take()
            if data:
                return data
            if conn.complete:
                return b""
            await conn.wait()

    async def read(self) -> bytes:
        conn = self._conn
        parts: list[bytes] = []
        while True:
            data = conn.take()
            if data:
                parts.append(data)
            if conn.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            await conn.wait()

    def release(self) -> None:
        """Done with a fully read response: the connection may serve the next request."""
        if not self._done:
            self._done = True
            self._conn.release()

    def close(self) -> None:
        """Done early (or on error): close the connection so the engine aborts the request."""
        if not self._done:
            self._done = True
            self._conn.close()


class _Pool:
    """Keep-alive connections to one endpoint (scheme, host, port, path prefix)."""

    def __init__(
        self,
        base: str,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float | None,
        keepalive: float,
    ) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError("connect", f"unsupported engine URL {base!r}")
        self.loop = asyncio.get_running_loop()
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        self.authority = parts.netloc.rsplit("@", 1)[-1].encode("latin-1")
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.open = 0
        self.idle: list[_Connection] = []
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._heads: dict[str, bytes] = {}

    def head(self, path: str) -> bytes:
        """The request line and fixed headers for ``path``, encoded once."""
        head = self._heads.get(path)
        if head is None:
            target = (self.prefix + path).encode("latin-1")
            head = (
                b"POST " + target + b" HTTP/1.1\r\nHost: " + self.authority
                + b"\r\nContent-Type: application/json\r\nX-Request-Id: "
            )  # fmt: skip
            if len(self._heads) < 64:
                self._heads[path] = head
        return head

    def take_idle(self) -> _Connection | None:
        """A pooled connection that is still usable, most recently used first, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.lost and time.monotonic() - conn.idle_since < self.keepalive:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def acquire(self) -> _Connection:
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn
            if self.open < self.limit:
                self.open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self.open -= 1
                    self._wake_one()
                    raise
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: pass the free slot on
                else:
                    waiter.cancel()
                raise

    async def _connect(self) -> _Connection:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            where = f"{self.host}:{self.port}"
            raise UpstreamError("timeout", f"connect to {where} timed out") from None
        except OSError as exc:
            raise UpstreamError("connect", f"connect to {self.host}:{self.port}: {exc}") from None
        return conn

    def put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._wake_one()

    def forget(self, conn: _Connection) -> None:
        """``conn`` is closed: free its slot (once) and drop it from the idle list."""
        if conn.counted:
            conn.counted = False
            self.open -= 1
            if not conn.active and conn in self.idle:
                self.idle.remove(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close_idle(self) -> None:
        for conn in list(self.idle):
            conn.close()


class LeanClient:
    """POSTs to engines over pooled keep-alive HTTP/1.1 connections. Use inside one event loop."""

    def __init__(
        self,
        *,
        limit_per_endpoint: int = 1024,
        connect_timeout: float = 5.0,
        read_timeout: float | None = 300.0,
        keepalive: float = 60.0,
    ) -> None:
        self._options = {
            "limit": limit_per_endpoint,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "keepalive": keepalive,
        }
        self._pools: dict[str, _Pool] = {}

    def pool(self, base: str) -> _Pool:
        pool = self._pools.get(base)
        if pool is None:
            pool = self._pools[base] = _Pool(base, **self._options)  # type: ignore[arg-type]
        return pool

    async def post(self, base: str, path: str, body: bytes, request_id: str) -> UpstreamResponse:
        """Send ``body`` to ``base + path``; returns once the status line and headers are in.

        A reused keep-alive connection that the engine closed before answering a single byte
        (its idle timeout racing our request: vLLM closes idle connections after 5 s) is
        retried once on a new connection; any other failure is the caller's to handle.
        """
        pool = self.pool(base)
        request = b"%s%s\r\nContent-Length: %d\r\n\r\n%s" % (
            pool.head(path),
            request_id.encode("latin-1"),
            len(body),
            body,
        )
        while True:
            # The common case without a coroutine: an idle keep-alive connection is ready.
            conn = pool.take_idle() or await pool.acquire()
            try:
                conn.send(request)
                while not conn.headers_done:
                    await conn.wait()
            except UpstreamError as exc:
                conn.close()
                if conn.reused and exc.reason == "disconnected" and not conn.chunks:
                    continue
                raise
            except BaseException:
                conn.close()  # cancelled before the headers: the engine must not go on
                raise
            return UpstreamResponse(conn)

    def close(self) -> None:
        """Close idle connections (busy ones close when their responses finish)."""
        for pool in self._pools.values():
            pool.close_idle()
        self._pools.clear()
