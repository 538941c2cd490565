"""A lean Redis client for the limiter's two scripts: one pipelined connection, RESP2 encoded
in place, replies parsed by hiredis.

redis-py's asyncio client costs ~60 µs of CPU per ``EVALSHA`` (connection pool, per-argument
encoding, response callbacks), several times the script's own work; the gateway's admission path
only ever sends ``EVALSHA`` (``EVAL`` once after a Redis restart drops the script cache). Requests
share one connection and are answered in order, so concurrent admissions pipeline. Errors are
redis-py's exception types, so ``FailoverLimiter`` treats them alike: a timeout or a lost
connection fails every call in flight and drops the connection; the next call reconnects.

Plain ``redis://host:port/db`` URLs, optionally with a user and password; ``from_url`` returns
None for anything else (TLS, unix sockets), and the limiter keeps redis-py's client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | int | bytes


def _arg(value: Arg) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    else:
        data = b"%d" % value
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode(parts: Sequence[Arg]) -> bytes:
    """One RESP2 command (an array of bulk strings)."""
    return b"*%d\r\n" % len(parts) + b"".join([_arg(p) for p in parts])


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiters = self.waiters
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not waiters:  # nothing asked for it: the stream is out of step
                self.abort(RedisConnectionError("unexpected reply from Redis"))
                return
            fut = waiters.popleft()
            if fut.done():  # timed out meanwhile (the connection is being dropped)
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(ResponseError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost ({exc or 'closed'})"))

    def fail(self, exc: Exception) -> None:
        self.lost = True
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def abort(self, exc: Exception) -> None:
        self.fail(exc)
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 0.25,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self._auth: list[Arg] | None = None
        if password is not None:
            self._auth = ["AUTH", username, password] if username else ["AUTH", password]
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @classmethod
    def from_url(cls, url: str, timeout: float = 0.25) -> RespClient | None:
        """A client for a plain ``redis://`` URL; None when it needs more (TLS, unix socket,
        query options): use redis-py then."""
        if not url.startswith("redis://") or "?" in url:
            return None
        opts = parse_url(url)
        if set(opts) - {"host", "port", "db", "username", "password"}:
            return None
        return cls(
            host=opts.get("host", "127.0.0.1"),
            port=int(opts.get("port", 6379)),
            db=int(opts.get("db", 0)),
            username=opts.get("username"),
            password=opts.get("password"),
            timeout=timeout,
        )

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        fut = self._connecting
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done():
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, proto = await loop.create_connection(_Protocol, self.host, self.port)
                setup = []
                if self._auth is not None:
                    setup.append(self._send(proto, self._auth))
                if self.db:
                    setup.append(self._send(proto, ["SELECT", self.db]))
                for reply in setup:
                    await reply
        except TimeoutError:
            raise RedisTimeoutError("timed out connecting to Redis") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis ({exc})") from None
        self._proto = proto
        return proto

    @staticmethod
    def _send(proto: _Protocol, parts: Sequence[Arg]) -> asyncio.Future[Any]:
        assert proto.transport is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.waiters.append(fut)
        proto.transport.write(encode(parts))
        return fut

    async def call(self, parts: Sequence[Arg]) -> Any:
        """Send one command and wait for its reply (at most ``timeout`` seconds)."""
        proto = await self._connection()
        fut = self._send(proto, parts)
        handle = asyncio.get_running_loop().call_later(self.timeout, self._expire, proto, fut)
        try:
            return await fut
        finally:
            handle.cancel()

    @staticmethod
    def _expire(proto: _Protocol, fut: asyncio.Future[Any]) -> None:
        if not fut.done():
            # Later replies cannot be matched reliably any more: drop the connection.
            proto.abort(RedisTimeoutError("Redis did not answer in time"))

    async def evalsha(self, sha: str, script: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """``EVALSHA``; after a Redis restart (``NOSCRIPT``) ``EVAL``, which caches it again."""
        try:
            return await self.call(["EVALSHA", sha, len(keys), *keys, *args])
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call(["EVAL", script, len(keys), *keys, *args])

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
            self._connecting = None
