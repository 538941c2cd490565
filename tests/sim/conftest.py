"""Fixtures that run real simulated engine servers.

* ``sim_server`` (a factory): one ``SimServer`` served by uvicorn inside the test's event loop on
  a free port, so a test can look at the engine itself (block pool, stats) while talking HTTP.
* ``engine_fleet``: engine servers in their own processes via ``sluice.sim.launch``, the way
  other packages' end-to-end tests and ``sluice up`` start them. Copy this fixture to use it:

      @pytest.fixture(scope="module")
      def engine_fleet():
          with start_engines(2, num_gpu_blocks=1024) as fleet:
              yield fleet          # fleet.urls -> ["http://127.0.0.1:PORT", ...]
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from sluice.sim.engine import EngineConfig
from sluice.sim.launch import EngineFleet, bind_socket, start_engines
from sluice.sim.server import ServerOptions, SimServer


@dataclass
class RunningServer:
    server: SimServer
    url: str

    @property
    def model(self) -> str:
        return self.server.model_name


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def sim_server() -> AsyncIterator[StartServer]:
    """``await sim_server(num_gpu_blocks=256, time_scale=1.0, max_loras=2, ...)``."""
    stops: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(
        *,
        time_scale: float = 1.0,
        max_loras: int = 4,
        kv_events_endpoint: str | None = None,
        kv_events_map_format: bool = False,
        kv_events_replay_endpoint: str | None = None,
        tokenizer_path: str | None = None,
        **engine: Any,
    ) -> RunningServer:
        options = ServerOptions(
            engine=EngineConfig(**engine),
            time_scale=time_scale,
            max_loras=max_loras,
            kv_events_endpoint=kv_events_endpoint,
            kv_events_map_format=kv_events_map_format,
            kv_events_replay_endpoint=kv_events_replay_endpoint,
            tokenizer_path=tokenizer_path,
        )
        server = SimServer(options)
        sock = bind_socket("127.0.0.1", 0)
        config = uvicorn.Config(
            server.app,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            timeout_graceful_shutdown=1,  # a test that failed mid-stream must not hang teardown
        )
        uv = uvicorn.Server(config)
        uv.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # pytest's
        task = asyncio.create_task(uv.serve(sockets=[sock]))
        stops.append((uv, task))
        while not uv.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        return RunningServer(server, f"http://127.0.0.1:{sock.getsockname()[1]}")

    yield start
    for uv, _ in stops:
        uv.should_exit = True
    for _, task in stops:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)


@pytest.fixture(scope="module")
def engine_fleet() -> Iterator[EngineFleet]:
    """Two engine processes on free ports, shared by a test module."""
    with start_engines(2, num_gpu_blocks=2048, max_loras=2) as fleet:
        yield fleet
