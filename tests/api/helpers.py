"""Run a gateway inside the test's event loop (async tests) on a free port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn

from sluice.api.app import build_app
from sluice.api.extensions import install_extensions
from sluice.api.gateway import Gateway
from sluice.api.server import bind, uvicorn_config
from sluice.config import SluiceConfig, load_config


def gateway_config(urls: Sequence[str], **overrides: Any) -> SluiceConfig:
    """Defaults suited to tests: fast probes and ejection, no request log noise."""
    values: dict[str, Any] = {
        "server.port": 0,
        "health.probe_interval_s": 0.05,
        "health.ejection_base_s": 0.2,
        "scraper.interval_s": 0.05,
        "logging.requests": False,
        "routing.policy": "round_robin",
    }
    values.update(overrides)
    values["endpoints"] = [{"url": u, "id": f"e{i}"} for i, u in enumerate(urls)]
    return load_config(env={}, overrides=values)


@contextlib.asynccontextmanager
async def running_gateway(
    config: SluiceConfig, extensions: tuple[str, ...] = ()
) -> AsyncIterator[tuple[str, Gateway]]:
    gateway = Gateway(config, extensions=False)
    install_extensions(gateway, extensions)
    app = build_app(gateway)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, config))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", gateway
    finally:
        server.should_exit = True
        await task
        sock.close()
