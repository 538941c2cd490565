"""The ASGI application: raw ASGI for the two hot routes, Starlette for everything else."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from sluice.api.completions import CompletionsHandler
from sluice.api.errors import ApiError
from sluice.api.gateway import Gateway
from sluice.api.parse import CHAT_PATH, COMPLETIONS_PATH
from sluice.api.routes import http_error, light_routes

Scope = dict[str, Any]


def build_app(gateway: Gateway) -> Any:
    """An ASGI app serving ``gateway``; its lifespan starts and stops the gateway's loops."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    light = Starlette(
        routes=[*light_routes(gateway), *gateway.routes],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    hot = {
        CHAT_PATH: CompletionsHandler(gateway, CHAT_PATH),
        COMPLETIONS_PATH: CompletionsHandler(gateway, COMPLETIONS_PATH),
    }
    not_allowed = ApiError(405, "method not allowed; use POST")

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            handler = hot.get(scope["path"])
            if handler is not None:
                if scope["method"] == "POST":
                    await handler(scope, receive, send)
                    return
                await send(
                    {
                        "type": "http.response.start",
                        "status": 405,
                        "headers": [(b"content-type", b"application/json"), (b"allow", b"POST")],
                    }
                )
                await send({"type": "http.response.body", "body": not_allowed.body()})
                return
        await light(scope, receive, send)

    app.gateway = gateway  # type: ignore[attr-defined]
    # Served without ASGI by ``LeanRouteProtocol`` in the common case (exact path, POST).
    app.hot_routes = {path.encode(): handler for path, handler in hot.items()}  # type: ignore[attr-defined]
    return app
