"""Admission overhead, in-process and with Redis (micro-benchmark, no HTTP).

Times one request's whole admission path as the gateway runs it: authenticate a cached API key
(a verified-credential cache hit: one dict lookup by the header value), check the model, resolve
the priority, build the limit plan (key, user, tenant, model, global) and reserve it; then,
separately, settle and build + journal the audit row. Backends: in-process limits, and Redis (one
Lua call to reserve, one to settle), next to a bare Redis PING for the round-trip floor.

    .venv/bin/python bench/admission_overhead.py [--n 20000] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

from sluice.admission.admission import Admission
from sluice.admission.auth import Authenticator
from sluice.admission.config import AdmissionConfig, LimitSet
from sluice.admission.key_store import KeyStore
from sluice.admission.limits import FailoverLimiter, Limiter, MemoryLimiter, RedisLimiter
from sluice.governance.db import make_engine, migrate
from sluice.governance.ledger import AuditRecord, AuditWriter, prompt_hash, sampling

BODY = {"model": "m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 30}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def row(name: str, us: list[float]) -> str:
    return (
        f"| {name} | {pct(us, 50):.1f} | {pct(us, 90):.1f} | {pct(us, 99):.1f} "
        f"| {statistics.fmean(us):.1f} |"
    )


async def admission_path(adm: Admission, header: str, n: int) -> tuple[list[float], list[float]]:
    reserve_us, settle_us = [], []
    for i in range(n):
        rid = f"r{i}"
        t0 = time.perf_counter_ns()
        principal = await adm.authenticate(header)
        adm.authorize(principal, "m")
        adm.priority(principal, None)
        ticket = await adm.reserve(rid, principal, "m", prompt_tokens=25, max_tokens=30)
        t1 = time.perf_counter_ns()
        assert ticket is not None
        await adm.settle(ticket, actual_tokens=40, served=True)
        t2 = time.perf_counter_ns()
        reserve_us.append((t1 - t0) / 1000)
        settle_us.append((t2 - t1) / 1000)
    return reserve_us, settle_us


async def commands(client: Redis) -> int:
    """Client round trips that ran a script so far (EVAL/EVALSHA in INFO commandstats; the
    commands a script runs inside Redis are counted separately and are not round trips)."""
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


async def ping(client: Redis, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await client.ping()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


async def ledger_submit(tmp: Path, n: int) -> list[float]:
    engine = make_engine(f"sqlite:///{tmp / 'ledger.db'}")
    await migrate(engine)
    writer = AuditWriter(engine, tmp / "spill")
    await writer.start()
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        writer.submit(
            AuditRecord(
                request_id=f"q{i}",
                ts=time.time(),
                status=200,
                tenant="acme",
                user="alice",
                key_id="k",
                model_requested="m",
                model_served="m",
                prompt_hash=prompt_hash(BODY),
                sampling=sampling(BODY),
                prompt_tokens=25,
                completion_tokens=30,
                e2e_ms=12.0,
            )
        )
        out.append((time.perf_counter_ns() - t0) / 1000)
        if i % 500 == 0:
            await asyncio.sleep(0)  # let the writer run, as the gateway's loop would
    await writer.close()
    await engine.dispose()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-admbench-"))
    engine = make_engine(f"sqlite:///{tmp / 'keys.db'}")
    await migrate(engine)
    _, key = await KeyStore(engine).create(tenant="acme", user="alice", tier="pro")
    header = f"Bearer {key}"
    cfg = AdmissionConfig()
    big = LimitSet(rpm=10**9, tpm=10**12, concurrency=10**6)
    limits = cfg.limits.model_copy(update={"key": big, "user": big, "tenant": big, "global_": big})
    cfg = cfg.model_copy(update={"limits": limits})
    auth = Authenticator(KeyStore(engine), cache_ttl=3600)

    results: dict[str, tuple[list[float], list[float]]] = {}
    default_cfg = AdmissionConfig()  # key, user, global requests/min only
    r = LimitSet(rpm=10**9)
    default_cfg = default_cfg.model_copy(
        update={"limits": default_cfg.limits.model_copy(update={"key": r, "user": r, "global_": r})}
    )
    adm = Admission(default_cfg, auth, MemoryLimiter())
    await admission_path(adm, header, 2000)
    results["defaults"] = await admission_path(adm, header, args.n)
    memory: Limiter = MemoryLimiter()
    adm = Admission(cfg, auth, memory)
    await admission_path(adm, header, 2000)  # warm up
    results["in-process"] = await admission_path(adm, header, args.n)

    client = Redis.from_url(args.redis)
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    redis_limiter = FailoverLimiter(RedisLimiter(client, prefix))
    adm = Admission(cfg, auth, redis_limiter)
    await admission_path(adm, header, 500)
    n_redis = max(1000, args.n // 4)
    before = await commands(client)
    results["redis"] = await admission_path(adm, header, n_redis)
    per_request = (await commands(client) - before) / n_redis
    ping_us = await ping(client, n_redis)
    keys = [k async for k in client.scan_iter(match="{" + prefix + "}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    submit_us = await ledger_submit(tmp, args.n)
    await engine.dispose()

    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; cores: {os.cpu_count()}")
    print(
        f"iterations: in-process {args.n}, redis {n_redis}; 5 scopes (key, user, tenant, "
        "model, global) with requests, tokens and concurrency limits\n"
    )
    print("| step (µs per request) | p50 | p90 | p99 | mean |")
    print("|---|---|---|---|---|")
    print(row("admit, in-process, default limits (3 buckets)", results["defaults"][0]))
    print(row("admit, in-process, all limits (12 buckets + 4 slot sets)", results["in-process"][0]))
    print(row("settle, in-process", results["in-process"][1]))
    print(row("admit, Redis, all limits (one Lua call)", results["redis"][0]))
    print(row("settle, Redis (one Lua call)", results["redis"][1]))
    print(row("Redis PING round trip (floor)", ping_us))
    print(row("audit row: build + journal + enqueue", submit_us))
    print(f"\nRedis script calls per request: {per_request:.2f} (one to reserve, one to settle)")


if __name__ == "__main__":
    asyncio.run(main())
