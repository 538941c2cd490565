"""Real gateway processes against real Redis and PostgreSQL.

- three gateways sharing Redis admit at most the request limit, and at most the token limit plus
  one request's estimate, under a concurrent burst;
- kill -9 of a gateway under load loses no audit row of an answered request (spill + replay);
- a Redis restart mid-load gives the configured behaviour (fail-open / fail-closed) and recovers
  without a gateway restart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from sluice.admission.devkey import create_key_async
from sluice.governance.db import make_engine
from sluice.governance.ledger.schema import audit_log
from tests.admission.processes import GatewayProcess, RedisServer
from tests.admission.services import REDIS_URL, drop_pg_database, pg_database
from tests.api.engine_double import MODEL, EngineDouble

pytestmark = pytest.mark.slow


def gateway_config(engine_url: str, db_url: str, spill: Path, **limits: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1"},
        "logging": {"requests": False, "level": "warning"},
        "health": {"probe_interval_s": 0.5},
        "endpoints": [{"url": engine_url, "id": "e0", "models": [MODEL]}],
        "admission": {
            "auth": {"key_cache_ttl_s": 30},
            "queue": {"enabled": False},
            "limits": {
                "backend": "redis",
                "redis_url": REDIS_URL,
                "redis_prefix": f"test:{uuid.uuid4().hex[:10]}",
                "key": {},
                "user": {},
                "global": {},
                **limits,
            },
        },
        "governance": {"database_url": db_url, "ledger": {"spill_dir": str(spill)}},
    }


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    url, name = await pg_database()
    yield url
    await drop_pg_database(name)


async def _start(*gateways: GatewayProcess) -> None:
    await asyncio.gather(*(asyncio.to_thread(g.start) for g in gateways))


def _stop(*gateways: GatewayProcess) -> None:
    for g in gateways:
        g.stop()


async def test_three_gateways_sharing_redis_enforce_request_and_token_limits(
    tmp_path: Path, pg_url: str
) -> None:
    engine = await EngineDouble(chunks=4, chunk_delay=3.0).start()
    _, req_key = await create_key_async(pg_url, tenant="t", user="a", rpm=30)
    _, tok_key = await create_key_async(pg_url, tenant="t", user="b", tpm=1000)
    config = gateway_config(engine.url, pg_url, tmp_path / "spill")
    gateways = [GatewayProcess(config, tmp_path, f"gw{i}") for i in range(3)]
    try:
        await _start(*gateways)
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=300)) as c:

            async def one(i: int, key: str, body: bytes) -> int:
                url = gateways[i % 3].url + "/v1/chat/completions"
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                return (await c.post(url, content=body, headers=headers)).status_code

            plain = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            t0 = time.monotonic()
            codes = await asyncio.gather(*(one(i, req_key, plain) for i in range(120)))
            elapsed = time.monotonic() - t0
            admitted = codes.count(200)
            assert set(codes) <= {200, 429}
            assert 30 <= admitted <= 30 + int(elapsed * 30 / 60), (admitted, elapsed)

            slow = orjson.dumps(
                {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 200,
                    "stream": True,
                }
            )
            estimate = len(slow) // 4 + 200  # what admission reserves per request

            async def opened(i: int) -> httpx.Response:
                request = c.build_request(
                    "POST",
                    gateways[i % 3].url + "/v1/chat/completions",
                    content=slow,
                    headers={"Authorization": f"Bearer {tok_key}"},
                )
                return await c.send(request, stream=True)

            t0 = time.monotonic()
            # Admitted streams stay open (the engine is slow) until every decision is in, so
            # nothing is settled, i.e. given back, during the burst.
            responses = await asyncio.gather(*(opened(i) for i in range(60)))
            elapsed = time.monotonic() - t0
            codes = [r.status_code for r in responses]
            for r in responses:
                await r.aclose()
            admitted = codes.count(200)
            assert set(codes) <= {200, 429}
            assert admitted * estimate <= 1000 + estimate + elapsed * 1000 / 60, admitted
            assert admitted >= 1000 // estimate
    finally:
        _stop(*gateways)
        await engine.stop()


async def test_kill_9_under_load_loses_no_answered_audit_row(tmp_path: Path, pg_url: str) -> None:
    engine = await EngineDouble().start()
    _, key = await create_key_async(pg_url, tenant="t", user="a")
    config = gateway_config(engine.url, pg_url, tmp_path / "spill")
    config["governance"]["ledger"]["flush_interval_s"] = 5.0  # rows wait in the journal
    config["admission"]["limits"]["backend"] = "memory"
    gateway = GatewayProcess(config, tmp_path, "gw")
    answered: list[str] = []
    stop = asyncio.Event()
    try:
        await _start(gateway)
        async with httpx.AsyncClient(timeout=10) as c:

            async def loop() -> None:
                headers = {"Authorization": f"Bearer {key}"}
                body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
                while not stop.is_set():
                    try:
                        r = await c.post(
                            gateway.url + "/v1/chat/completions", json=body, headers=headers
                        )
                    except httpx.HTTPError:
                        return  # the gateway is gone
                    if r.status_code == 200:
                        answered.append(r.headers["x-request-id"])

            loops = [asyncio.create_task(loop()) for _ in range(8)]
            await asyncio.sleep(1.5)
            await asyncio.to_thread(gateway.kill9)  # mid-load
            stop.set()
            await asyncio.gather(*loops)
        assert len(answered) > 50
        db = make_engine(pg_url)
        try:
            # No segment was sealed before the kill (the flush interval is 5 s): every row was
            # only in the journal. The gateway's orphaned writer process replays it, then exits.
            after: set[str] = set()
            for _ in range(150):
                async with db.connect() as conn:
                    after = set((await conn.execute(sa.select(audit_log.c.request_id))).scalars())
                if set(answered) <= after:
                    break
                await asyncio.sleep(0.1)
            await _start(gateway)  # a fresh process starts cleanly on what is left
        finally:
            await db.dispose()
        missing = set(answered) - after
        assert not missing, f"{len(missing)} answered requests have no audit row"
    finally:
        _stop(gateway)
        await engine.stop()


async def test_redis_restart_gives_configured_behaviour_and_recovers(
    tmp_path: Path, pg_url: str
) -> None:
    engine = await EngineDouble().start()
    redis = RedisServer().start()
    _, key = await create_key_async(pg_url, tenant="t", user="a", rpm=100_000)
    gateways = []
    for mode in ("open", "closed"):
        config = gateway_config(engine.url, pg_url, tmp_path / f"spill-{mode}")
        config["admission"]["limits"].update(
            redis_url=redis.url, on_redis_error=mode, redis_retry_s=0.3
        )
        gateways.append(GatewayProcess(config, tmp_path, mode))
    fail_open, fail_closed = gateways
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    try:
        await _start(*gateways)
        async with httpx.AsyncClient(timeout=10) as c:

            async def status(g: GatewayProcess) -> httpx.Response:
                return await c.post(g.url + "/v1/chat/completions", json=body, headers=headers)

            assert (await status(fail_open)).status_code == 200
            assert (await status(fail_closed)).status_code == 200
            redis.kill()
            for _ in range(5):
                assert (await status(fail_open)).status_code == 200  # local limits apply
                refused = await status(fail_closed)
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "limiter_unavailable"
                assert int(refused.headers["retry-after"]) >= 1
            for g in gateways:
                assert await asyncio.to_thread(g.metric, "sluice_admission_limiter_degraded") == 1
                errors = await asyncio.to_thread(
                    g.metric, "sluice_admission_limiter_backend_errors_total"
                )
                assert errors is not None and errors >= 5
            redis.start()  # same port, empty
            deadline = time.monotonic() + 10
            while (await status(fail_closed)).status_code != 200:
                assert time.monotonic() < deadline, "fail-closed gateway did not recover"
                await asyncio.sleep(0.1)
            assert (await status(fail_open)).status_code == 200
            for g in gateways:
                assert await asyncio.to_thread(g.metric, "sluice_admission_limiter_degraded") == 0
            client = Redis.from_url(redis.url)
            try:
                assert await client.dbsize() > 0  # the shared limiter is in use again
            finally:
                await client.aclose()
        for g in gateways:
            assert "shared limiter unreachable" in g.log_path.read_text()
    finally:
        _stop(*gateways)
        redis.kill()
        await engine.stop()
