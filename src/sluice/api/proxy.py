"""Route and proxy one request: pick an endpoint, send, stream the answer back as bytes.

Retries happen only while nothing has reached the client (connect error or timeout, a 502/503
from the engine, or a connection that dies before its first body byte), on an endpoint not yet
tried, at most ``upstream.max_retries`` times. After the first byte there is no retry: a failing
stream ends with an SSE error event; a failing non-stream gets a 502.

Load accounting: every attempt is ``begin`` ... ``end`` on its endpoint, in a ``finally``, so
success, error, retry and cancellation all balance.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson

from sluice.api.context import OK, UPSTREAM_ERROR, RequestContext
from sluice.api.errors import ApiError, sse_error_event
from sluice.api.gateway import Gateway
from sluice.routing import Decision, EndpointState, NoEndpointError, RequestFacts
from sluice.routing.pools import PoolFullError
from sluice.upstream.client import UpstreamError, UpstreamResponse
from sluice.upstream.sse import STREAM_TAP, StreamTap

Send = Any  # ASGI send callable

_RETRY_STATUSES = frozenset((502, 503))
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_EWMA = 0.2


class _Retryable(Exception):
    """This attempt failed before anything reached the client."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


async def proxy(gw: Gateway, ctx: RequestContext, send: Send) -> None:
    facts = ctx.facts
    assert facts is not None
    tried: list[EndpointState] = []
    last: _Retryable | None = None
    for attempt in range(gw.config.upstream.max_retries + 1):
        states = gw.fleet.states
        if tried:
            states = [s for s in states if s not in tried]
        try:
            decision = await _route(gw, facts, states)
        except NoEndpointError:
            break
        state = decision.endpoint
        ctx.decision, ctx.endpoint, ctx.attempts = decision, state, attempt + 1
        try:
            await _attempt(gw, ctx, decision, send)
            return
        except _Retryable as failure:
            last = failure
            tried.append(state)
            gw.metrics.retries.labels(state.id, failure.reason).inc()
    if last is not None:
        ctx.outcome = UPSTREAM_ERROR
        raise ApiError(502, f"no engine could answer the request (last error: {last})")
    raise ApiError(
        503,
        f"no healthy endpoint serves model {ctx.model!r}; retry later",
        headers=[(b"retry-after", str(gw.fleet.retry_after()).encode())],
    )


async def _route(gw: Gateway, facts: RequestFacts, states: list[EndpointState]) -> Decision:
    """Route; when the request's pool is full and its rule says "wait", hold the request and
    route again every ``retry_after`` seconds, up to ``routing.wait_max_s``, then answer 503."""
    deadline = gw.clock() + gw.config.routing.wait_max_s
    while True:
        started = time.perf_counter()
        try:
            return gw.router.route(facts, states, gw.clock())
        except PoolFullError as full:
            if gw.clock() + full.retry_after > deadline:
                raise ApiError(
                    503,
                    f"every endpoint of pool {full.pool!r} is full; retry later",
                    headers=[(b"retry-after", str(max(1, math.ceil(full.retry_after))).encode())],
                ) from None
            wait = full.retry_after
        finally:
            gw.metrics.decision.observe(time.perf_counter() - started)
        await asyncio.sleep(wait)


async def _attempt(gw: Gateway, ctx: RequestContext, decision: Decision, send: Send) -> None:
    facts = ctx.facts
    assert facts is not None
    state = decision.endpoint
    prefill = facts.prompt_tokens if decision.prefill_tokens is None else decision.prefill_tokens
    state.begin(prefill)
    gw.policy.on_dispatch(facts, state, gw.clock())
    ok = False
    response: UpstreamResponse | None = None
    try:
        if decision.load_adapter:
            await _load_adapter(gw, state, decision.load_adapter)
        body = ctx.upstream_body(decision.upstream_model)
        try:
            response = await gw.client.post(state.endpoint.url, ctx.path, body, ctx.request_id)
        except UpstreamError as exc:
            gw.fleet.record_failure(state)
            raise _Retryable(exc.reason, f"{state.id}: {exc}") from None
        if response.status in _RETRY_STATUSES:
            gw.fleet.record_failure(state)
            raise _Retryable(f"status_{response.status}", f"{state.id}: HTTP {response.status}")
        if ctx.stream and response.status == 200:
            await _stream(gw, ctx, state, response, send)
        else:
            await _whole(gw, ctx, state, response, send)
        ok = ctx.outcome == OK
    finally:
        if response is not None:
            # An unfinished response is closed, not pooled: the engine sees the disconnect and
            # aborts the request, freeing its KV cache.
            if ok:
                response.release()
            else:
                response.close()
        state.end(prefill, prefill_done=ctx.first_byte_at is not None)
        gw.policy.on_complete(
            facts, state, gw.clock(), ctx.ttft, ok, output_tokens=ctx.usage.completion_tokens
        )


def _failed_early(gw: Gateway, state: EndpointState, reason: str, detail: str) -> _Retryable:
    """A failure before anything reached the client: it counts against the endpoint, and the
    request may still be retried elsewhere."""
    gw.fleet.record_failure(state)
    return _Retryable(reason, f"{state.id}: {detail}")


async def _whole(
    gw: Gateway,
    ctx: RequestContext,
    state: EndpointState,
    response: UpstreamResponse,
    send: Send,
) -> None:
    """A non-streamed answer (or any non-200 answer): read it whole, pass it through."""
    try:
        data = await response.read()
    except UpstreamError as exc:
        raise _failed_early(gw, state, exc.reason, str(exc)) from None
    status = response.status
    if status >= 500:
        gw.fleet.record_failure(state)
    else:
        gw.fleet.record_success(state)
    if status == 200:
        _usage_from_body(ctx, data)
    ctx.status = status
    ctx.outcome = OK
    ctx.response_started = ctx.response_done = True
    headers = _headers(gw, ctx, response.content_type or b"application/json")
    # A known length spares the client (and uvicorn) chunked framing.
    headers.append((b"content-length", str(len(data)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def _stream(
    gw: Gateway,
    ctx: RequestContext,
    state: EndpointState,
    response: UpstreamResponse,
    send: Send,
) -> None:
    """Pass an SSE stream through, noting the first byte and the usage on the way."""
    try:
        first = await response.chunk()
    except UpstreamError as exc:
        raise _failed_early(gw, state, exc.reason, str(exc)) from None
    if not first:
        raise _failed_early(gw, state, "empty", "stream ended before its first byte")
    now = gw.clock()
    ctx.first_byte_at = now
    # The same amount ``begin`` counted: the uncached prefill when routing predicted it.
    decision = ctx.decision
    if decision is not None and decision.prefill_tokens is not None:
        state.first_token(decision.prefill_tokens)
    else:
        state.first_token(ctx.facts.prompt_tokens if ctx.facts else 0)
    ttft = now - ctx.started
    state.ttft_ewma = (
        ttft if state.ttft_ewma is None else state.ttft_ewma + _EWMA * (ttft - state.ttft_ewma)
    )
    tap = ctx.extra[STREAM_TAP] = StreamTap(strip_usage=not ctx.client_wants_usage)
    ctx.status = 200
    ctx.response_started = True
    headers = _headers(gw, ctx, response.content_type or b"text/event-stream")
    headers.extend(_SSE_HEADERS)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    out = tap.feed(first)
    if not out:
        # No complete event yet: the head goes out now, not with the first event.
        await send({"type": "http.response.body", "body": b"", "more_body": True})
    try:
        # What arrived is sent before waiting for more; once the engine has sent everything,
        # the rest goes out with the final message (one write fewer for short answers).
        while not response.finished:
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            chunk = await response.chunk()
            out = tap.feed(chunk) if chunk else b""
    except UpstreamError as exc:
        # After the first byte: never retry. Tell the client in-band, then close.
        gw.fleet.record_failure(state)
        ctx.outcome = UPSTREAM_ERROR
        ctx.error = f"{state.id}: stream failed after the first byte ({exc.reason})"
        if tap.usage is not None:
            ctx.usage.update(tap.usage)
        ctx.response_done = True
        event = sse_error_event("the engine failed while streaming the response")
        await send({"type": "http.response.body", "body": event, "more_body": False})
        return
    gw.fleet.record_success(state)
    ctx.outcome = OK
    out += tap.flush()
    if tap.usage is not None:
        ctx.usage.update(tap.usage)
    if tap.finish_reason is not None:
        ctx.extra["finish_reason"] = tap.finish_reason
    ctx.response_done = True
    await send({"type": "http.response.body", "body": out, "more_body": False})


async def _load_adapter(gw: Gateway, state: EndpointState, adapter: str) -> None:
    """Ask the engine to load a LoRA adapter routing chose it for (vLLM's runtime loading)."""
    path = gw.config.adapters.get(adapter, adapter)
    payload = orjson.dumps({"lora_name": adapter, "lora_path": path})
    try:
        status, _ = await gw.client.post_small(
            state.endpoint.url + "/v1/load_lora_adapter", payload, gw.config.health.probe_timeout_s
        )
    except UpstreamError as exc:
        gw.fleet.record_failure(state)
        raise _Retryable(exc.reason, f"{state.id}: loading adapter {adapter!r}: {exc}") from None
    if status != 200:
        raise _Retryable("lora_load", f"{state.id}: loading adapter {adapter!r}: HTTP {status}")
    # Known at once, before the next scrape says so.
    state.loras = state.loras | {adapter}


def _usage_from_body(ctx: RequestContext, data: bytes) -> None:
    try:
        parsed = orjson.loads(data)
        usage = parsed.get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return
    if isinstance(usage, dict):
        ctx.usage.update(usage)
    # The first choice's finish reason (and its text, for tenants whose text is kept), for the
    # audit row: governance sets ``store_text`` and reads both from ctx.extra.
    choices = parsed.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        reason = first.get("finish_reason")
        if isinstance(reason, str):
            ctx.extra["finish_reason"] = reason
        if ctx.extra.get("store_text"):
            message = first.get("message")
            text = message.get("content") if isinstance(message, dict) else first.get("text")
            if isinstance(text, str):
                ctx.extra["response_text"] = text


def _headers(gw: Gateway, ctx: RequestContext, content_type: bytes) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type), (b"x-request-id", ctx.request_id.encode())]
    if ctx.response_headers:
        headers.extend(ctx.response_headers)
    if gw.config.server.debug_route_header and ctx.decision is not None:
        explained = ctx.decision.explain().encode("latin-1", "replace")
        headers.append((b"x-sluice-route", explained))
    return headers
