"""Admission overhead, in-process and with Redis (micro-benchmark, no HTTP).

Times one request's whole admission path as the gateway runs it: authenticate a cached API key
(a verified-credential cache hit: one dict lookup by the header value), check the model, resolve
the priority, build the limit plan (key, user, tenant, model, global) and reserve it; then,
separately, settle; and the audit row as the gateway journals it (the compact row, encoded and
copied into the journal segment) and as the writer process inserts it (read, expanded, inserted
into SQLite), per row. Backends: in-process limits, and Redis (one Lua call to reserve, one to
settle) through redis-py and through the gateway's lean client, next to a bare Redis PING for the
round-trip floor.

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
from sluice.admission.limits.resp import RespClient
from sluice.api.context import RequestContext
from sluice.governance.config import GovernanceConfig
from sluice.governance.db import make_engine, migrate
from sluice.governance.gateway import Ledger
from sluice.governance.ledger import AuditWriter, raw
from sluice.governance.ledger.process import sqlite_file
from sluice.governance.registry import ModelEntry, Registry
from sluice.routing import Decision
from sluice.routing.endpoint import Endpoint, EndpointState

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


async def ledger_submit(tmp: Path, n: int) -> tuple[list[float], float]:
    """Gateway side: the compact row of an answered request, encoded and journaled (journal-only
    mode, segments sealed every 500 rows). Writer side: read + expand + insert, µs per row."""
    url = f"sqlite:///{tmp / 'ledger.db'}"
    engine = make_engine(url)
    await migrate(engine)
    registry = Registry([ModelEntry(name="m", version="1", prices={"input_per_m": 1.0})])
    ledger = Ledger(None, GovernanceConfig(), registry, None)  # type: ignore[arg-type]
    spill = tmp / "spill"
    writer = AuditWriter(engine, spill, inline=False, header=raw.header(registry.entries()))
    await writer.start()
    state = EndpointState(Endpoint(id="e0", url="http://e0"))
    out = []
    for i in range(n):
        ctx = RequestContext(
            request_id=f"q{i}",
            path="/v1/chat/completions",
            headers={},
            client=None,
            started=0.0,
            started_wall=time.time(),
            body=BODY,
            model="m",
            tenant="acme",
            user="alice",
            api_key_id="k",
            status=200,
            outcome="ok",
            finished_at=0.012,
        )
        ctx.decision = Decision(state, "affinity_cost", {"e0": 0.5})
        ctx.endpoint = state
        ctx.usage.update({"prompt_tokens": 25, "completion_tokens": 30})
        t0 = time.perf_counter_ns()
        writer.submit_raw(ledger.raw_row(ctx))
        out.append((time.perf_counter_ns() - t0) / 1000)
        if i % 500 == 499:
            writer.seal()
            writer._prepare()  # what the rotate task does between seals
    await writer.close()
    inserter = AuditWriter(engine, spill, sqlite_path=sqlite_file(url))
    t0 = time.process_time()
    inserted = await inserter.replay()
    per_row = (time.process_time() - t0) / max(1, inserted) * 1e6
    inserter.close_sqlite()
    await engine.dispose()
    return out, per_row


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
    lean = RespClient.from_url(args.redis)
    if lean is not None:
        adm = Admission(cfg, auth, FailoverLimiter(RedisLimiter(client, prefix + "l", lean)))
        await admission_path(adm, header, 500)
        results["redis-lean"] = await admission_path(adm, header, n_redis)
        await lean.close()
    keys = [k async for k in client.scan_iter(match="{" + prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    submit_us, writer_us = await ledger_submit(tmp, args.n)
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
    if "redis-lean" in results:
        print(row("admit, Redis, lean client", results["redis-lean"][0]))
        print(row("settle, Redis, lean client", results["redis-lean"][1]))
    print(row("Redis PING round trip (floor)", ping_us))
    print(row("audit row, gateway side: compact row + journal", submit_us))
    print(
        f"| audit row, writer side: read + expand + insert (CPU per row) | | | | {writer_us:.1f} |"
    )
    print(f"\nRedis script calls per request: {per_request:.2f} (one to reserve, one to settle)")


if __name__ == "__main__":
    asyncio.run(main())
