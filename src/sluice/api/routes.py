"""The light routes, on Starlette: /v1/models, /health, /ready, /metrics, and error pages."""

from __future__ import annotations

import time

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluice.api.errors import ApiError
from sluice.api.gateway import Gateway
from sluice.telemetry.metrics import CONTENT_TYPE

_STARTED = int(time.time())


def light_routes(gw: Gateway) -> list[Route]:
    async def models(_: Request) -> Response:
        """Configured models with their metadata, then whatever else the engines serve."""
        serving: dict[str, list[str]] = {}
        for state in gw.fleet.states:
            for name in state.endpoint.models:
                serving.setdefault(name, []).append(state.id)
        data = []
        for name, cfg in gw.models.items():
            entry = {
                "id": name,
                "object": "model",
                "created": _STARTED,
                "owned_by": cfg.owned_by,
                "root": name,
                "parent": None,
                "max_model_len": cfg.max_model_len,
                "description": cfg.description,
                "metadata": cfg.metadata,
                "endpoints": serving.get(name, []),
            }
            data.append(entry)
        for name in sorted(serving.keys() - gw.models.keys()):
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": _STARTED,
                    "owned_by": "sluice",
                    "root": name,
                    "parent": None,
                    "endpoints": serving[name],
                }
            )
        return JSONResponse({"object": "list", "data": data})

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def ready(_: Request) -> Response:
        if gw.fleet.any_available():
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {"status": "no healthy endpoint"},
            status_code=503,
            headers={"Retry-After": str(gw.fleet.retry_after())},
        )

    async def metrics(_: Request) -> Response:
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE)

    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


async def http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in the OpenAI error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = exc.detail if isinstance(exc, HTTPException) else "internal error"
    err = ApiError(status, str(message))
    return Response(err.body(), status_code=status, media_type="application/json")
