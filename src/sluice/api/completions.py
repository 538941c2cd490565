"""POST /v1/chat/completions and /v1/completions, as raw ASGI (the hot path).

Stages, in order: parse -> admit (hooks) -> route + proxy -> settle (hooks, exactly once).
A client disconnect cancels the request where it stands (the upstream connection is closed, so
the engine aborts); it still settles, with status 499 and outcome ``cancelled``.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from sluice.api.context import CANCELLED, OK, REJECTED, UPSTREAM_ERROR, RequestContext
from sluice.api.errors import ApiError, error_body
from sluice.api.gateway import Gateway
from sluice.api.parse import parse_into, read_body
from sluice.api.proxy import proxy

if TYPE_CHECKING:
    from sluice.api.http_protocol import Exchange

Scope = dict[str, Any]
Receive = Any
Send = Any

_MAX_REQUEST_ID = 128


class CompletionsHandler:
    """One hot route; ASGI callable, and a ``HotRoute`` for ``LeanRouteProtocol``."""

    def __init__(self, gateway: Gateway, path: str) -> None:
        self.gw = gateway
        self.path = path
        self._limit = self.max_body_bytes = gateway.config.server.max_body_bytes
        self._log_requests = gateway.config.logging.requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry: requests the lean protocol does not take (and ASGI-only servers)."""
        client = scope.get("client")
        ctx = self._context(dict(scope["headers"]), client[0] if client else None)
        await self._serve(ctx, send, receive, b"")

    def serve_exchange(self, exchange: Exchange) -> Coroutine[Any, Any, None]:
        """The lean entry (``LeanRouteProtocol``): the body is complete, and the protocol
        reports a disconnect through ``exchange.on_disconnect`` (no watcher task).

        Called in the request's task; returns ``_serve``'s coroutine rather than awaiting it,
        one frame fewer to pass through each time the task resumes."""
        client = exchange.client
        ctx = self._context(dict(exchange.headers), client[0] if client else None)
        task = exchange.task  # this request's task (cheaper than asyncio.current_task())

        def disconnected() -> None:
            if not ctx.response_done and task is not None:
                ctx.client_gone = True
                task.cancel()

        exchange.on_disconnect = disconnected
        return self._serve(ctx, exchange.send, None, exchange.body)

    def _context(self, headers: dict[bytes, bytes], client: str | None) -> RequestContext:
        return RequestContext(
            request_id=_request_id(headers.get(b"x-request-id")),
            path=self.path,
            headers=headers,
            client=client,
            started=self.gw.clock(),
            started_wall=time.time(),
        )

    async def _serve(
        self, ctx: RequestContext, send: Send, receive: Receive | None, body: bytes
    ) -> None:
        """Parse, admit, route and proxy, then settle and record. With ``receive`` (ASGI) the
        body is read from it and a watcher task turns a disconnect into a cancellation;
        without, ``body`` is the whole body and the caller arranges the cancellation."""
        gw = self.gw
        gw.metrics.in_flight += 1
        watcher: asyncio.Task[None] | None = None
        try:
            try:
                try:
                    if receive is not None:
                        body = await read_body(ctx.headers, receive, self._limit)
                    parse_into(ctx, body)
                    if receive is not None:
                        watcher = asyncio.get_running_loop().create_task(
                            _watch_disconnect(receive, ctx, asyncio.current_task())
                        )
                    if gw.hooks.admit:
                        await self._admit(ctx)
                    ctx.admitted = True
                    if gw.engine_tokenizer is not None:
                        ctx.extra["token_ids"] = await gw.engine_tokenizer.token_ids(ctx)
                    ctx.facts = gw.facts_builder(ctx)
                    if not gw.known_model(ctx.facts.model):
                        raise ApiError(
                            404, f"The model `{ctx.model}` does not exist.", param="model"
                        )
                    await proxy(gw, ctx, send)
                except ApiError as err:
                    await _fail(ctx, send, err)
                except Exception as exc:
                    gw.log.exception("request_failed", request_id=ctx.request_id)
                    await _fail(ctx, send, ApiError(500, f"internal error ({type(exc).__name__})"))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not ctx.client_gone or task is None:
                    raise
                task.uncancel()
                ctx.status, ctx.outcome = 499, CANCELLED
        finally:
            if watcher is not None:
                watcher.cancel()
            ctx.finished_at = gw.clock()
            gw.metrics.in_flight -= 1
        if ctx.model and gw.hooks.settle:
            await self._settle(ctx)
        self._record(ctx)

    async def _admit(self, ctx: RequestContext) -> None:
        for hook in self.gw.hooks.admit:
            await hook(ctx)

    async def _settle(self, ctx: RequestContext) -> None:
        for hook in self.gw.hooks.settle:
            try:
                await hook(ctx)
            except Exception:
                self.gw.log.exception("settle_hook_failed", request_id=ctx.request_id)

    def _record(self, ctx: RequestContext) -> None:
        gw = self.gw
        endpoint = ctx.endpoint.id if ctx.endpoint is not None else "none"
        usage = ctx.usage
        e2e = ctx.e2e or 0.0
        model = ctx.model or "unknown"
        gw.metrics.observe_request(
            model,
            endpoint,
            ctx.status,
            e2e,
            ctx.ttft,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
        )
        if usage.known and usage.prompt_tokens and ctx.facts is not None:
            gw.learn_prompt_rate(ctx.facts, usage.prompt_tokens)
        if self._log_requests:
            ttft = ctx.ttft
            gw.request_log.line(
                {
                    "event": "request",
                    "request_id": ctx.request_id,
                    "path": ctx.path,
                    "model": model,
                    "stream": ctx.stream,
                    "endpoint": endpoint,
                    # The routing decision: chosen endpoint, reason, every candidate's score.
                    "route": None if ctx.decision is None else ctx.decision.explain(),
                    "attempts": ctx.attempts,
                    "status": ctx.status,
                    "outcome": ctx.outcome,
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "cached_tokens": usage.cached_tokens,
                    "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
                    "e2e_ms": round(e2e * 1000, 3),
                    "tenant": ctx.tenant,
                    "error": ctx.error,
                }
            )


async def _fail(ctx: RequestContext, send: Send, err: ApiError) -> None:
    ctx.status = err.status
    ctx.error = err.message
    if not ctx.outcome or ctx.outcome == OK:
        ctx.outcome = UPSTREAM_ERROR if err.status in (502, 504) else REJECTED
    if err.status == 499:
        ctx.outcome = CANCELLED
        return
    if ctx.response_started:
        return
    ctx.response_started = ctx.response_done = True
    body = error_body(err.message, err.type, err.param, err.code)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", ctx.request_id.encode()),
        *err.headers,
        *ctx.response_headers,
    ]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _watch_disconnect(
    receive: Receive, ctx: RequestContext, task: asyncio.Task[Any] | None
) -> None:
    """Cancel the request the moment its client goes away (unless the answer is complete)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not ctx.response_done and task is not None:
                ctx.client_gone = True
                task.cancel()
            return


# Generated ids: a random per-process prefix and a counter (unique, and ~50x cheaper than
# drawing 16 random bytes per request).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


def _request_id(given: bytes | None) -> str:
    if given:
        value = given.decode("latin-1")
        if len(value) <= _MAX_REQUEST_ID and value.isprintable():
            return value
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
