"""CPU cost of the upstream client alone: POSTs to an instant upstream, no gateway around them.

Measures both clients the gateway has had for completions, with the same pooled keep-alive
connections and the same request: aiohttp (the session options ``sluice.upstream.client`` used)
and the lean HTTP/1.1 client (``sluice.upstream.lean``, the one in use). Pin it to a core for
steadier figures: ``taskset -c 0 .venv/bin/python bench/gateway_overhead/client_cost.py URL``.

    .venv/bin/python bench/gateway_overhead/client_cost.py http://127.0.0.1:PORT [requests]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop

from sluice.upstream.lean import LeanClient

BODY = b'{"model":"bench-json","messages":[{"role":"user","content":"Say hello."}],"max_tokens":30}'
PATH = "/v1/chat/completions"
HEADERS = {"Content-Type": "application/json", "X-Request-Id": "bench"}


async def _cpu_per_request(
    one: Callable[[], Awaitable[None]], requests: int, workers: int
) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    await worker(200)  # warm the pool and the code paths
    per_worker = requests // workers
    started = time.process_time()
    await asyncio.gather(*(worker(per_worker) for _ in range(workers)))
    return (time.process_time() - started) * 1e6 / (per_worker * workers)


async def aiohttp_cost(url: str, requests: int, workers: int) -> float:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=1024, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    ) as session:

        async def one() -> None:
            response = await session.post(url + PATH, data=BODY, headers=HEADERS)
            await response.read()
            response.release()

        return await _cpu_per_request(one, requests, workers)


async def lean_cost(url: str, requests: int, workers: int) -> float:
    client = LeanClient()

    async def one() -> None:
        response = await client.post(url, PATH, BODY, "bench")
        await response.read()
        response.release()

    try:
        return await _cpu_per_request(one, requests, workers)
    finally:
        client.close()


if __name__ == "__main__":
    target = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    for name, measure in (("aiohttp", aiohttp_cost), ("lean", lean_cost)):
        cost = uvloop.run(measure(target, count, 8))
        print(f"{name} client: {cost:.0f} µs CPU per request (8 concurrent loops, keep-alive)")
