"""uvicorn's httptools protocol, writing a response's head together with its first body part.

uvicorn writes the status line and headers the moment the app sends ``http.response.start`` and
the body with the next message: two ``send`` syscalls (and two wake-ups of the client) for every
response, although the gateway always sends the first body part right after the start. Here the
head is held until that body part and written with it, as one buffer: the same bytes on the wire,
one syscall fewer per request (~10 % of the gateway's CPU per request at 128 connections).

The head is never held past the current event-loop iteration: an app that awaits something
between the start and the body (or fails there) still has its head written on the next
iteration, as soon as uvicorn would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import (
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)


class _Hold:
    """Stands in for the transport while uvicorn writes the head: keeps the bytes."""

    __slots__ = ("data", "real")

    def __init__(self, real: asyncio.Transport) -> None:
        self.real = real
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _Prepend:
    """Stands in for the transport while uvicorn writes the first body part: the held head goes
    out in the same write (or before a close)."""

    __slots__ = ("head", "real")

    def __init__(self, real: asyncio.Transport, head: bytes) -> None:
        self.real = real
        self.head = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, b""
        self.real.write(head + data if head else data)

    def close(self) -> None:
        if self.head:
            self.real.write(self.head)
            self.head = b""
        self.real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class HeldHeadCycle(RequestResponseCycle):
    _held_head: bytes = b""

    async def send(self, message: Any) -> None:
        # Waited for here, so that uvicorn's ``send`` below runs without suspending while the
        # transport is swapped (it awaits nothing else).
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        real = self.transport
        if not self.response_started and message["type"] == "http.response.start":
            hold = _Hold(real)
            self.transport = hold  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = real
            if hold.data:
                self._held_head = hold.data
                asyncio.get_running_loop().call_soon(self._flush_head)
            return
        head = self._held_head
        if not head:
            await super().send(message)
            return
        self._held_head = b""
        prepend = _Prepend(real, head)
        self.transport = prepend  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = real
            if prepend.head and not self.disconnected and not real.is_closing():
                real.write(prepend.head)  # nothing was written (HEAD, an error): the head alone

    def _flush_head(self) -> None:
        head, self._held_head = self._held_head, b""
        if head and not self.disconnected and not self.transport.is_closing():
            self.transport.write(head)


class HeldHeadProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # The ASGI task has been created but not run yet: its ``send`` is looked up later.
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = HeldHeadCycle


# -- the hot routes without ASGI ------------------------------------------------------------------


class HotRoute(Protocol):
    """A handler the protocol calls directly (``build_app`` lists them as ``app.hot_routes``)."""

    # Bodies declared larger than this go through ASGI (which answers the 413).
    max_body_bytes: int

    def serve_exchange(self, exchange: Exchange) -> Awaitable[None]:
        """Called in the request's task, once the whole body is in; answers through
        ``exchange.send``."""
        ...


class Exchange:
    """One request on a hot route, served without ASGI.

    The protocol collects the body and starts ``HotRoute.serve_exchange`` once the whole request
    is in: no scope dict, no ``receive`` coroutine, and no watcher task waiting on it for the
    disconnect (the protocol's ``connection_lost`` cancels the handler's task directly, through
    ``on_disconnect``). ``send`` takes the ASGI response messages the handlers already send
    (start, then body parts) and writes each response's head with its first body part, as
    ``HeldHeadProtocol`` does. It also stands in for uvicorn's ``RequestResponseCycle`` in the
    protocol (``response_complete``, ``keep_alive``, ``disconnected``), so pipelining, keep-alive
    timeouts and graceful shutdown work as for any other request.
    """

    __slots__ = (
        "_chunked",
        "_head",
        "_protocol",
        "_route",
        "body",
        "client",
        "disconnected",
        "headers",
        "keep_alive",
        "on_disconnect",
        "response_complete",
        "response_started",
        "task",
    )

    def __init__(
        self,
        protocol: LeanRouteProtocol,
        route: HotRoute,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        self._protocol = protocol
        self._route = route
        self.headers = headers
        self.client: tuple[str, int] | None = protocol.client
        self.body = b""
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.task: asyncio.Task[None] | None = None
        # Set by the handler once it runs: called when the client goes away before the end.
        self.on_disconnect: Callable[[], None] | None = None
        self._head = b""
        self._chunked = False

    async def send(self, message: Any) -> None:
        """An ASGI ``http.response.start`` or ``http.response.body`` message."""
        protocol = self._protocol
        if protocol.flow.write_paused and not self.disconnected:
            await protocol.flow.drain()  # a slow client: wait as uvicorn would
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']!r}")
            self.response_started = True
            self._head = self._encode_head(message["status"], message.get("headers", ()))
            return  # held until the first body part
        if self.response_complete:
            raise RuntimeError("response already complete")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            data = body
        head = self._head
        if head:
            self._head = b""
            data = head + data
        if data:
            protocol.transport.write(data)
        if not more:
            self.response_complete = True
            if not self.keep_alive:
                protocol.transport.close()
            protocol.on_response_complete()

    def _encode_head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        # Names come from the handlers' code (lower-case constants); values are checked as
        # uvicorn checks them, since some carry request data (a header injected through a value
        # would split the response).
        parts = [STATUS_LINE[status]]
        for name, value in self._protocol.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        length = False
        for name, value in headers:
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            if name == b"content-length":
                length = True
            parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        if not length and status not in (204, 304):
            self._chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def run(self) -> None:
        protocol = self._protocol
        try:
            if not self.disconnected:  # gone before the task ran: nothing to answer
                await self._route.serve_exchange(self)
        except BaseException as exc:
            # What uvicorn's ``run_asgi`` does for a failing app (the handlers answer their own
            # errors; this is for bugs, and for cancellation at shutdown).
            if not isinstance(exc, asyncio.CancelledError):
                protocol.logger.error("Exception in hot route handler", exc_info=exc)
            if not self.disconnected:
                if not self.response_started:
                    self.keep_alive = False
                    await self.send(_500_START)
                    await self.send(_500_BODY)
                elif not self.response_complete:
                    protocol.transport.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if not self.response_complete and not self.disconnected:
                protocol.logger.error("hot route handler returned without completing a response")
                protocol.transport.close()
        finally:
            protocol.tasks.discard(self.task)  # type: ignore[arg-type]

    def lost(self) -> None:
        """The client's connection closed."""
        if self.response_complete:
            return
        self.disconnected = True
        if self.on_disconnect is not None:
            self.on_disconnect()


_500_START = {
    "type": "http.response.start",
    "status": 500,
    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
}
_500_BODY = {"type": "http.response.body", "body": b"Internal Server Error", "more_body": False}


class LeanRouteProtocol(HeldHeadProtocol):
    """``HeldHeadProtocol`` that serves the app's hot routes (``app.hot_routes``: exact path ->
    ``HotRoute``) through an ``Exchange`` instead of ASGI, and everything else through ASGI.

    Only the common case takes the lean path: POST, HTTP/1.1, a path without a query string,
    a Content-Length within the route's limit, no ``Expect: 100-continue``, no upgrade, no
    concurrency limit and no pipelined request ahead of it. Anything else (chunked request
    bodies, oversized bodies, HTTP/1.0, ...) goes through ASGI to the same handlers, so
    every edge case keeps its ASGI behaviour (the 413, 405, 400 answers among them).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Loop time the connection went idle (its last response complete); None while a
        # request is being read or served. See ``on_response_complete``.
        self._idle_since: float | None = None
        # The app itself, not wrapped by uvicorn (proxy headers, trace logging): middleware
        # must see every request, so a wrapped app serves everything through ASGI.
        hot: dict[bytes, HotRoute] | None = getattr(self.app, "hot_routes", None)
        self._hot: dict[bytes, HotRoute] = hot or {}
        self._length: bytes | None = None

    def on_message_begin(self) -> None:
        # The ASGI scope is built only for requests that go through ASGI (``_to_asgi``).
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._length = None

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.rstrip(b" \t")  # as uvicorn: no trailing whitespace in values
        if name == b"content-length":
            self._length = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        route = self._hot.get(self.url)
        if route is not None and self._lean_ok(route):
            exchange = Exchange(self, route, self.headers, self.parser.should_keep_alive())
            self.cycle = exchange  # type: ignore[assignment]
            return
        self._to_asgi()
        super().on_headers_complete()

    def _lean_ok(self, route: HotRoute) -> bool:
        parser = self.parser
        length = self._length
        if (
            length is None
            or self.expect_100_continue
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
            or self.limit_concurrency is not None
        ):
            return False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return False  # pipelined behind a running request: ASGI queues it
        try:
            return int(length) <= route.max_body_bytes
        except ValueError:
            return False

    def _to_asgi(self) -> None:
        """Build uvicorn's scope for this request (what its ``on_message_begin`` does)."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is Exchange:
            cycle.body += body
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is Exchange:
            task = cycle.task = self.loop.create_task(cycle.run())
            self.tasks.add(task)
            return
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_keep_alive()
        cycle = self.cycle
        if type(cycle) is not Exchange:
            super().connection_lost(exc)
            return
        # uvicorn's bookkeeping (it would poke an ASGI cycle's event), then the exchange's.
        self.cycle = None  # type: ignore[assignment]
        try:
            super().connection_lost(exc)
        finally:
            self.cycle = cycle
        cycle.lost()

    # -- keep-alive timeout without a timer per request ---------------------------------------
    # uvicorn arms a ``call_later`` after every response and cancels it on the next request's
    # first bytes: a timer created and cancelled per request. Here one timer per connection
    # stays armed; when it fires it closes the connection only if it has been idle for the
    # whole timeout, and otherwise re-arms for the rest of it (or not at all while busy).

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # data arrived: not idle (uvicorn cancels its timer here)

    def on_response_complete(self) -> None:
        # uvicorn's ``on_response_complete``, less the timer per response.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_check
            )

    def _keep_alive_check(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None or self.transport.is_closing():
            return  # busy: the next response completion arms the timer again
        left = idle_since + self.timeout_keep_alive - self.loop.time()
        if left <= 0:
            self.timeout_keep_alive_handler()
        else:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_check)

    def _cancel_keep_alive(self) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
