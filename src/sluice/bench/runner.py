"""Open-loop HTTP load generator: streaming OpenAI completions, per-request records.

Each request is sent at its workload arrival time (scaled to the wall clock by ``time_scale``,
the simulator's wall seconds per simulated second) whether or not earlier ones have finished;
a request that depends on another (the next turn of a chat) waits for it, then its think time.
Prompts are token ids rendered to text with the simulator's word tokenizer, which encodes them
back to exactly the same ids. Records are in simulated seconds: wall time / ``time_scale``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson

from sluice.bench.engine_metrics import (
    HITS,
    KV_USAGE,
    QUERIES,
    RUNNING,
    SIM_CLOCK,
    WAITING,
    scrape,
)
from sluice.bench.metrics import RequestRecord, counter_delta, hit_rate
from sluice.bench.workloads.base import WorkloadRequest
from sluice.sim.tokenizer import WordTokenizer


@dataclass(slots=True)
class HttpOptions:
    base_url: str
    model: str = "sim-model"
    time_scale: float = 1.0
    engine_urls: Sequence[str] = ()
    scrape_interval: float = 1.0  # wall seconds between load samples of the engines
    timeout: float = 600.0
    session_header: str | None = "x-session-id"
    endpoint_header: str | None = None  # a response header naming the serving engine, if any
    api_key: str | None = None


@dataclass(slots=True)
class HttpRunResult:
    records: list[RequestRecord]
    prefix_hit_rate: float | None
    load_series: list[tuple[float, list[float]]] = field(default_factory=list)
    kv_usage_mean: float | None = None  # engines' mean KV usage while busy
    wall_time: float = 0.0
    engine_deltas: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self, time_scale: float) -> None:
        self.t0 = time.perf_counter()
        self.scale = time_scale

    def sim(self) -> float:
        return (time.perf_counter() - self.t0) / self.scale

    async def sleep_until(self, sim_t: float) -> None:
        delay = sim_t * self.scale - (time.perf_counter() - self.t0)
        if delay > 0:
            await asyncio.sleep(delay)


async def _one(
    session: aiohttp.ClientSession,
    opts: HttpOptions,
    clock: _Clock,
    req: WorkloadRequest,
    prompt_text: str,
) -> RequestRecord:
    body = {
        "model": opts.model,
        "prompt": prompt_text,
        "max_tokens": req.max_tokens,
        "min_tokens": req.max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"content-type": "application/json"}
    if opts.session_header and req.session_id:
        headers[opts.session_header] = req.session_id
    if opts.api_key:
        headers["authorization"] = f"Bearer {opts.api_key}"
    start = clock.sim()
    first: float | None = None
    last = start
    itls: list[float] = []
    chunks = 0
    usage: dict = {}
    endpoint = ""
    try:
        async with session.post(
            opts.base_url.rstrip("/") + "/v1/completions",
            data=orjson.dumps(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=opts.timeout),
        ) as resp:
            if opts.endpoint_header:
                endpoint = resp.headers.get(opts.endpoint_header, "")
            if resp.status != 200:
                text = (await resp.text())[:300]
                return RequestRecord(
                    req.request_id,
                    start,
                    clock.sim(),
                    None,
                    len(req.prompt),
                    0,
                    endpoint,
                    ok=False,
                    error=f"HTTP {resp.status}: {text}",
                )
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                obj = orjson.loads(payload)
                if "error" in obj:
                    raise RuntimeError(str(obj["error"])[:300])
                if obj.get("usage"):
                    usage = obj["usage"]
                choices = obj.get("choices") or []
                if choices and choices[0].get("text"):
                    now = clock.sim()
                    if first is None:
                        first = now
                    else:
                        itls.append(now - last)
                    last = now
                    chunks += 1
    except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as exc:
        return RequestRecord(
            req.request_id,
            start,
            clock.sim(),
            first,
            len(req.prompt),
            chunks,
            endpoint,
            ok=False,
            error=f"{type(exc).__name__}: {exc}"[:300],
        )
    end = clock.sim()
    details = usage.get("prompt_tokens_details") or {}
    return RequestRecord(
        request_id=req.request_id,
        start=start,
        end=end,
        first_token=first,
        prompt_tokens=int(usage.get("prompt_tokens", len(req.prompt))),
        output_tokens=int(usage.get("completion_tokens", chunks)),
        endpoint=endpoint,
        cached_tokens=details.get("cached_tokens"),
        ok=first is not None or req.max_tokens == 0,
        error="" if first is not None else "no tokens streamed",
        itls=itls,
    )


async def run_http(
    workload: Iterable[WorkloadRequest],
    opts: HttpOptions,
    total: int | None = None,
    on_done: Callable[[int, int], None] | None = None,
) -> HttpRunResult:
    """Send ``workload`` open-loop; ``on_done(done, total)`` after each completion."""
    tokenizer = WordTokenizer()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        before = await _scrape_all(session, opts.engine_urls)
        clock = _Clock(opts.time_scale)
        wall0 = time.perf_counter()
        done_events: dict[str, asyncio.Event] = {}
        records: list[RequestRecord] = []
        load_series: list[tuple[float, list[float]]] = []
        kv_samples: list[float] = []
        tasks: list[asyncio.Task[None]] = []
        stop = asyncio.Event()

        async def sample_load() -> None:
            while not stop.is_set():
                snap = await asyncio.gather(*(scrape(session, u) for u in opts.engine_urls))
                loads = [s.get(RUNNING, 0.0) + s.get(WAITING, 0.0) for s in snap]
                load_series.append((clock.sim(), loads))
                # KV usage while an engine has work: the load level a run was made at.
                busy = zip(snap, loads, strict=True)
                kv_samples.extend(s[KV_USAGE] for s, n in busy if n and KV_USAGE in s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), opts.scrape_interval)

        async def launch(req: WorkloadRequest) -> None:
            if req.depends_on is not None:
                await done_events[req.depends_on].wait()
                await asyncio.sleep(req.think_time * opts.time_scale)
            text = tokenizer.decode(req.prompt)
            rec = await _one(session, opts, clock, req, text)
            records.append(rec)
            done_events[req.request_id].set()
            if on_done is not None:
                on_done(len(records), total or 0)

        sampler = asyncio.create_task(sample_load()) if opts.engine_urls else None
        for req in workload:
            done_events[req.request_id] = asyncio.Event()
            if req.depends_on is None:
                await clock.sleep_until(req.arrival)
            tasks.append(asyncio.create_task(launch(req)))
        await asyncio.gather(*tasks)
        stop.set()
        if sampler is not None:
            await sampler
        after = await _scrape_all(session, opts.engine_urls)
    delta = counter_delta(before, after)
    return HttpRunResult(
        records=records,
        prefix_hit_rate=hit_rate(delta.get(QUERIES, 0.0), delta.get(HITS, 0.0))
        if opts.engine_urls
        else None,
        load_series=load_series,
        kv_usage_mean=sum(kv_samples) / len(kv_samples) if kv_samples else None,
        wall_time=time.perf_counter() - wall0,
        engine_deltas=delta,
    )


async def _scrape_all(session: aiohttp.ClientSession, urls: Sequence[str]) -> dict[str, float]:
    total = dict.fromkeys((QUERIES, HITS, *SIM_CLOCK), 0.0)
    for snap in await asyncio.gather(*(scrape(session, u) for u in urls)):
        for key in total:
            total[key] += snap.get(key, 0.0)
    return total
