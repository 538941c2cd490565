"""Client disconnect → engine abort latency of the simulated engine server.

A raw HTTP/1.1 client starts a long streaming chat completion, reads three chunks, closes its
socket, and the script times how long until the engine no longer runs the request (its blocks
are free). The server runs in this process so the engine can be watched directly.

    .venv/bin/python bench/sim_disconnect.py --trials 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time

import orjson
import uvicorn

from sluice.sim.engine import EngineConfig
from sluice.sim.launch import bind_socket
from sluice.sim.server import ServerOptions, SimServer
from sluice.sim.tokenizer import text_of_length


async def _measure(trials: int) -> list[float]:
    server = SimServer(ServerOptions(engine=EngineConfig(num_gpu_blocks=1024)))
    sock = bind_socket("127.0.0.1", 0)
    uv = uvicorn.Server(uvicorn.Config(server, log_level="warning", access_log=False))
    uv.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    while not uv.started:
        await asyncio.sleep(0.01)
    port, engine = sock.getsockname()[1], server.engine
    latencies: list[float] = []
    for i in range(trials):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = orjson.dumps(
            {
                "messages": [{"role": "user", "content": text_of_length(100, seed=i)}],
                "max_tokens": 2000,
                "ignore_eos": True,
                "stream": True,
            }
        )
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 3:
            received += await reader.read(4096)
        writer.close()
        start = time.perf_counter()
        while engine.stats.num_running:
            await asyncio.sleep(0.0002)
        latencies.append((time.perf_counter() - start) * 1000)
    uv.should_exit = True
    await task
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    latencies = asyncio.run(_measure(parser.parse_args().trials))
    print(
        f"disconnect -> abort: median {statistics.median(latencies):.2f} ms, "
        f"max {max(latencies):.2f} ms over {len(latencies)} trials"
    )


if __name__ == "__main__":
    main()
