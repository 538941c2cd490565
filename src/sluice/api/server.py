"""Run the gateway under uvicorn (uvloop + httptools), in the foreground or in a thread."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
from typing import Any

import uvicorn

from sluice.api.app import build_app
from sluice.api.gateway import Gateway
from sluice.api.http_protocol import LeanRouteProtocol
from sluice.config import SluiceConfig


def uvicorn_config(app: Any, config: SluiceConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        loop="uvloop",
        # httptools, writing each response's head with its first body part (one syscall fewer),
        # and serving the completions routes without the ASGI layer in the common case.
        http=LeanRouteProtocol,
        lifespan="on",
        access_log=False,  # the gateway writes its own line per request
        proxy_headers=False,  # X-Forwarded-* is not trusted by default (and costs per request)
        server_header=False,
        log_level="warning",
        timeout_keep_alive=75,
        # On SIGTERM, open streams get this long to finish before they are cut.
        timeout_graceful_shutdown=30,
        backlog=4096,
    )


# Young-generation collections every this many net container allocations (CPython: 700).
_GC_GEN0_THRESHOLD = 20_000


async def settle_heap() -> None:
    """A gateway startup step for long-running servers (``sluice serve``, ``sluice up``).

    Everything built at startup (modules, app, config, routing tables) is collected once and
    then frozen out of the cyclic GC, so later full collections scan only per-request objects:
    in the gateway process a full collection of the startup heap takes ~10 ms, a latency spike
    for every request in flight. Young collections run less often, for less CPU per request.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(_GC_GEN0_THRESHOLD, gen1, gen2)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (tests, embedded mode)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class GatewayServer:
    """A gateway serving on a socket, in a background thread with its own event loop.

    ``start()`` returns once the gateway is listening and has probed its engines; ``stop()``
    shuts it down gracefully. Used by ``sluice up`` and by tests that use blocking clients.
    """

    def __init__(self, config: SluiceConfig, gateway: Gateway | None = None) -> None:
        self.gateway = gateway or Gateway(config)
        self.app = build_app(self.gateway)
        self._sock = bind(config.server.host, config.server.port)
        self.port: int = self._sock.getsockname()[1]
        host = config.server.host
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"
        self._server = uvicorn.Server(uvicorn_config(self.app, config))
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, name="sluice-gateway", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self, timeout: float = 30.0) -> GatewayServer:
        self._thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self._server.started and self._thread.is_alive() and waited < timeout:
            deadline.wait(0.02)
            waited += 0.02
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"gateway did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
