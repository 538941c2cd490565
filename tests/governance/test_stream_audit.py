"""Streamed answers through the gateway against ``sluice sim``: the audit row carries the finish
reason, and a stream the client cancels settles (limits and ledger) with the tokens it produced."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sluice.governance.ledger.schema import audit_log
from sluice.sim.launch import EngineFleet, start_engines
from tests.admission.gateway_helpers import admin_headers, governed_config, governed_gateway

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MESSAGES = [{"role": "user", "content": "Say something about sluices."}]
TPM = 100_000


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineFleet]:
    with start_engines(1) as fleet:
        yield fleet


async def _row(gw: Any, request_id: str) -> dict[str, Any]:
    db = gw._sluice_database.engine
    query = sa.select(audit_log).where(audit_log.c.request_id == request_id)
    for _ in range(100):
        async with db.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is not None:
            return dict(row._mapping)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no audit row for {request_id}")


async def _key(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    r = await client.post(
        url + "/admin/keys",
        json={"tenant": "acme", "user": "alice", "tpm": TPM},
        headers=admin_headers(),
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


@pytest.mark.parametrize(
    ("path", "prompt"),
    [("/v1/chat/completions", {"messages": MESSAGES}), ("/v1/completions", {"prompt": "Hi"})],
)
async def test_streamed_answers_record_their_finish_reason_and_usage(
    engine: EngineFleet, tmp_path: Path, path: str, prompt: dict[str, Any]
) -> None:
    config = governed_config(engine.urls, tmp_path)
    async with governed_gateway(config) as (url, gw), httpx.AsyncClient(timeout=30) as client:
        headers = await _key(client, url)
        body = {"model": MODEL, **prompt, "max_tokens": 5, "stream": True}
        r = await client.post(url + path, json=body, headers=headers)
        assert r.status_code == 200 and b"[DONE]" in r.content
        row = await _row(gw, r.headers["x-request-id"])
    assert row["finish_reason"] == "length"  # the sim stops at max_tokens
    assert row["completion_tokens"] == 5 and row["prompt_tokens"] > 0


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_cancelled_stream_settles_with_the_tokens_it_produced(
    engine: EngineFleet, tmp_path: Path, backend: str, redis_prefix: str
) -> None:
    config = governed_config(
        engine.urls,
        tmp_path,
        **{
            "admission.limits.backend": backend,
            "admission.limits.redis_prefix": redis_prefix,
            # A long period: the token bucket refills by only ~28 tokens/s during the test.
            "admission.limits.period_s": 3600.0,
        },
    )
    chat = "/v1/chat/completions"
    async with governed_gateway(config) as (url, gw), httpx.AsyncClient(timeout=30) as client:
        headers = await _key(client, url)
        long = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4000, "stream": True}
        async with client.stream("POST", url + chat, json=long, headers=headers) as r:
            assert r.status_code == 200
            request_id = r.headers["x-request-id"]
            received = b""
            async for chunk in r.aiter_bytes():
                received += chunk
                if received.count(b"data:") >= 4:
                    break  # the client goes away mid-stream, with no usage report
        row = await _row(gw, request_id)
        small = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}
        after = await client.post(url + chat, json=small, headers=headers)
    assert row["finish_reason"] == "cancelled"
    produced = row["completion_tokens"]
    assert 3 <= produced < 4000  # the role chunk carries no token
    assert row["prompt_tokens"] > 0
    # Had the 4,000-token estimate stayed charged, fewer than TPM - 4,000 would remain.
    remaining = int(after.headers["x-ratelimit-remaining-tokens"])
    assert remaining >= TPM - 500, remaining
