"""How much streaming load one simulated engine server carries on this machine.

Closed loop: ``--concurrency`` clients each send streaming completions (``ignore_eos``, fixed
prompt and output lengths) back to back until ``--requests`` are done. Reported:

* chunks/s delivered to the clients (one chunk per token);
* pace: simulated seconds elapsed x time_scale / wall seconds. 1.0 means the server kept the
  virtual clock in step with the wall clock; below 1 the Python process could not keep up and the
  simulated clock stalled (the runner re-anchors instead of racing), so raise ``--time-scale``;
* client-side TTFT (wall) next to the engine's TTFT (simulated, x time_scale);
* server CPU time per streamed chunk (steadier than wall rates on a shared machine);
* CPU seconds the idle server burns per wall second (should be ~0: no spinning).

    .venv/bin/python bench/sim_server_load.py --concurrency 1 32 128 --requests 256
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import aiohttp
import orjson

from sluice.sim.launch import start_engines
from sluice.sim.tokenizer import text_of_length


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _one(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str, max_tokens: int
) -> tuple[int, float, dict[str, float]]:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = 0.0
    chunks = 0
    timing: dict[str, float] = {}
    async with session.post(url + "/v1/completions", json=body) as response:
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            event = orjson.loads(line[6:])
            if event["choices"]:
                if chunks == 0:
                    ttft = time.perf_counter() - start
                chunks += 1
            else:
                timing = event["sim_timing"]
    return chunks, ttft, timing


async def _run(
    url: str, pid: int, model: str, concurrency: int, requests: int, args: argparse.Namespace
) -> dict[str, float]:
    prompts = [text_of_length(args.prompt_tokens, seed=i) for i in range(requests)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results: list[tuple[int, float, dict[str, float]]] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                prompt = queue.get_nowait()
                results.append(await _one(session, url, model, prompt, args.output_tokens))

        start, cpu_start = time.perf_counter(), _cpu_seconds(pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - start, _cpu_seconds(pid) - cpu_start
    chunks = sum(r[0] for r in results)
    simulated = max(r[2]["finished"] for r in results) - min(r[2]["arrival"] for r in results)
    client_ttft = statistics.median(r[1] for r in results)
    engine_ttft = statistics.median(r[2]["first_token"] - r[2]["arrival"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "wall_s": wall,
        "chunks_per_s": chunks / wall,
        "server_cpu_us_per_chunk": cpu / chunks * 1e6,
        "pace": simulated * args.time_scale / wall,
        "client_ttft_p50_ms": client_ttft * 1000,
        "engine_ttft_p50_ms": engine_ttft * args.time_scale * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args()
    with start_engines(1, time_scale=args.time_scale) as fleet:
        url = fleet.urls[0]
        pid = fleet.processes[0].pid
        model = asyncio.run(_model(url))
        idle_start = _cpu_seconds(pid)
        time.sleep(2.0)
        idle_cpu = (_cpu_seconds(pid) - idle_start) / 2.0
        print(f"idle server CPU: {idle_cpu:.3f} s/s")
        print(
            "| concurrency | requests | wall s | chunks/s | server CPU µs/chunk | pace | "
            "client TTFT p50 ms | engine TTFT p50 ms (x scale) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for concurrency in args.concurrency:
            r = asyncio.run(_run(url, pid, model, concurrency, args.requests, args))
            print(
                f"| {r['concurrency']} | {r['requests']} | {r['wall_s']:.1f} | "
                f"{r['chunks_per_s']:.0f} | {r['server_cpu_us_per_chunk']:.0f} | "
                f"{r['pace']:.2f} | {r['client_ttft_p50_ms']:.1f} | "
                f"{r['engine_ttft_p50_ms']:.1f} |"
            )


async def _model(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/v1/models") as response:
        return str((await response.json())["data"][0]["id"])


if __name__ == "__main__":
    main()
