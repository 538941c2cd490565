"""The engine client: one aiohttp session, keep-alive connections pooled per endpoint.

Timeouts: a connect timeout, and an idle-read timeout (longest silence between two reads). No
overall timeout, so a long stream is never cut while it is making progress.
"""

from __future__ import annotations

import asyncio

import aiohttp

from sluice.config import UpstreamConfig


class UpstreamError(Exception):
    """The engine could not be reached, or the connection failed; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# Transport failures, mapped to a short reason for metrics and logs.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError)


def failure_reason(exc: BaseException) -> str:
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

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("EngineClient.start() was not awaited")
        return self._session

    async def start(self) -> None:
        cfg = self._config
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
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, request_id: str) -> aiohttp.ClientResponse:
        """Send the request; returns once the engine's status and headers are in."""
        try:
            return await self.session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", "X-Request-Id": request_id},
            )
        except TRANSPORT_ERRORS as exc:
            raise UpstreamError(failure_reason(exc), f"{type(exc).__name__}: {exc}") from None

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
