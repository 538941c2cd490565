"""The engine client: the lean HTTP/1.1 client (``upstream.lean``) for completions, the hot
path; an aiohttp session for control traffic (probes, ``/metrics``, adapter loads).

Both pool keep-alive connections per endpoint. Timeouts: a connect timeout, and an idle-read
timeout (longest silence between two reads). No overall timeout on completions, so a long stream
is never cut while it is making progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import aiohttp

from sluice.config import UpstreamConfig
from sluice.upstream.lean import LeanClient, UpstreamError, UpstreamResponse

__all__ = ["TRANSPORT_ERRORS", "EngineClient", "UpstreamError", "UpstreamResponse"]

# aiohttp transport failures, mapped to a short reason for metrics and logs.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, UpstreamError):
        return exc.reason
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload"
    return "transport"


class EngineClient:
    def __init__(self, config: UpstreamConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._lean: LeanClient | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("EngineClient.start() was not awaited")
        return self._session

    async def start(self) -> None:
        cfg = self._config
        self._lean = LeanClient(
            limit_per_endpoint=cfg.max_connections_per_endpoint,
            connect_timeout=cfg.connect_timeout_s,
            read_timeout=cfg.idle_read_timeout_s,
            keepalive=cfg.keepalive_timeout_s,
        )
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=cfg.max_connections_per_endpoint,
            keepalive_timeout=cfg.keepalive_timeout_s,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=cfg.connect_timeout_s, sock_read=cfg.idle_read_timeout_s
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self._lean is not None:
            self._lean.close()
            self._lean = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def post(
        self, base: str, path: str, body: bytes, request_id: str
    ) -> Coroutine[Any, Any, UpstreamResponse]:
        """Send a completion request to ``base + path``; the awaited result comes once the
        engine's status and headers are in. Raises ``UpstreamError``; the response's
        ``read``/``chunk`` do too. (The lean client's coroutine itself, not one around it: one
        frame fewer on the hot path.)"""
        if self._lean is None:
            raise RuntimeError("EngineClient.start() was not awaited")
        return self._lean.post(base, path, body, request_id)

    async def post_small(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        """A short control POST (loading an adapter); raises UpstreamError on failure."""
        try:
            async with self.session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                return response.status, await response.read()
        except TRANSPORT_ERRORS as exc:
            raise UpstreamError(failure_reason(exc), f"{type(exc).__name__}: {exc}") from None

    async def get(self, url: str, timeout: float) -> tuple[int, bytes]:
        """A short GET (probes, /metrics, /v1/models); raises UpstreamError on failure."""
        try:
            async with self.session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                return response.status, await response.read()
        except TRANSPORT_ERRORS as exc:
            raise UpstreamError(failure_reason(exc), f"{type(exc).__name__}: {exc}") from None
