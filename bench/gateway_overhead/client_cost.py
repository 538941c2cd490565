"""CPU cost of the upstream client alone: aiohttp POSTs to an instant upstream, no gateway.

Shows how much of the gateway's per-request CPU is the aiohttp client (pooled keep-alive
connections, the same session options as ``sluice.upstream.client``).

    .venv/bin/python bench/gateway_overhead/client_cost.py http://127.0.0.1:PORT [requests]
"""

from __future__ import annotations

import asyncio
import sys
import time

import uvloop

from sluice.config import UpstreamConfig
from sluice.upstream.client import EngineClient

BODY = b'{"model":"bench-json","messages":[{"role":"user","content":"Say hello."}],"max_tokens":30}'


async def measure(url: str, requests: int, concurrency: int = 8) -> float:
    client = EngineClient(UpstreamConfig())
    await client.start()
    try:
        target = url + "/v1/chat/completions"

        async def worker(count: int) -> None:
            for _ in range(count):
                response = await client.post(target, BODY, "bench")
                await response.read()
                response.release()

        await worker(200)  # warm the pool
        started = time.process_time()
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        return (time.process_time() - started) * 1e6 / (requests // concurrency * concurrency)
    finally:
        await client.close()


if __name__ == "__main__":
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    print(f"aiohttp client: {uvloop.run(measure(sys.argv[1], count)):.0f} µs CPU per request")
