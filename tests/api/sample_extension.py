"""An extension as admission/governance write them: hooks, a route, lifecycle (for tests)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluice.api.context import RequestContext
from sluice.api.errors import ApiError
from sluice.api.gateway import Gateway

SETTLED: list[RequestContext] = []
EVENTS: list[str] = []


def install(gateway: Gateway) -> None:
    async def admit(ctx: RequestContext) -> None:
        if ctx.header("x-deny") is not None:
            raise ApiError(429, "slow down", code="rate_limited", headers=[(b"retry-after", b"7")])
        ctx.tenant = ctx.header("x-tenant")
        ctx.response_headers.append((b"x-ratelimit-remaining", b"41"))

    async def settle(ctx: RequestContext) -> None:
        SETTLED.append(ctx)

    async def started() -> None:
        EVENTS.append("started")

    async def stopped() -> None:
        EVENTS.append("stopped")

    async def hello(_: Request) -> Response:
        return JSONResponse({"tenants": sorted({c.tenant or "" for c in SETTLED})})

    gateway.hooks.admit.append(admit)
    gateway.hooks.settle.append(settle)
    gateway.routes.append(Route("/admin/hello", hello))
    gateway.on_startup.append(started)
    gateway.on_shutdown.append(stopped)
