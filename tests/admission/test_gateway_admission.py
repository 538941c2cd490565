"""Admission through a running gateway: every bad input, limits and headers, the admin API,
slots released on cancel, audit rows and /v1/models metadata."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from sluice.governance.ledger.schema import audit_log
from tests.admission.gateway_helpers import admin_headers, governed_config, governed_gateway
from tests.api.engine_double import MODEL, EngineDouble

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


async def _key(client: httpx.AsyncClient, url: str, **spec: object) -> dict:
    payload = {"tenant": "acme", "user": "alice", **spec}
    r = await client.post(url + "/admin/keys", json=payload, headers=admin_headers())
    assert r.status_code == 201, r.text
    return r.json()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


async def test_bad_credentials_models_and_limits(tmp_path: Path) -> None:
    engine = await EngineDouble().start()
    config = governed_config([engine.url], tmp_path, **{"admission.limits.user.rpm": 3})
    try:
        async with governed_gateway(config) as (url, _), httpx.AsyncClient() as client:
            chat = url + "/v1/chat/completions"
            good = (await _key(client, url, models=[MODEL]))["key"]
            other = (await _key(client, url, user="bob", models=["other-model"]))["key"]
            expired = (await _key(client, url, user="carol", expires_in_s=0.05))["key"]
            revoked = await _key(client, url, user="dave")
            r = await client.delete(f"{url}/admin/keys/{revoked['id']}", headers=admin_headers())
            assert r.status_code == 200
            await asyncio.sleep(0.1)

            bad = [
                {},
                {"Authorization": "Basic xyz"},
                _bearer("sk-sluice-garbage"),
                _bearer(good[:-2] + ("AA" if not good.endswith("AA") else "BB")),
                _bearer(expired),
                _bearer(revoked["key"]),
            ]
            messages = set()
            for headers in bad[2:]:
                err = _openai_error(await client.post(chat, json=BODY, headers=headers), 401)
                assert err["code"] == "invalid_api_key"
                messages.add(err["message"])
            assert len(messages) == 1  # nothing tells invalid, expired and revoked apart
            for headers in bad[:2]:
                _openai_error(await client.post(chat, json=BODY, headers=headers), 401)

            err = _openai_error(await client.post(chat, json=BODY, headers=_bearer(other)), 403)
            assert err["param"] == "model"

            oks = [await client.post(chat, json=BODY, headers=_bearer(good)) for _ in range(3)]
            assert all(r.status_code == 200 for r in oks)
            assert oks[0].headers["x-ratelimit-limit-requests"] == "3"
            assert oks[2].headers["x-ratelimit-remaining-requests"] == "0"
            limited = await client.post(chat, json=BODY, headers=_bearer(good))
            err = _openai_error(limited, 429)
            assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
            assert int(limited.headers["retry-after"]) >= 1
            assert limited.headers["x-ratelimit-remaining-requests"] == "0"
            assert limited.headers["x-ratelimit-reset-requests"].endswith("s")
    finally:
        await engine.stop()


async def test_admin_api_credentials_input_and_usage(tmp_path: Path) -> None:
    engine = await EngineDouble().start()
    config = governed_config([engine.url], tmp_path)
    try:
        async with governed_gateway(config) as (url, _), httpx.AsyncClient() as client:
            user_key = (await _key(client, url))["key"]
            keys_url = url + "/admin/keys"
            _openai_error(await client.get(keys_url), 401)
            _openai_error(await client.get(keys_url, headers=_bearer("nope")), 401)
            _openai_error(await client.get(keys_url, headers=_bearer(user_key)), 403)
            for body in (
                b"{",
                b"[]",
                b'{"tenant": "t"}',
                b'{"tenant": "t", "user": "u", "rpm": -1}',
                b'{"tenant": "t", "user": "u", "colour": "red"}',
            ):
                r = await client.post(keys_url, content=body, headers=admin_headers())
                _openai_error(r, 400)
            listed = (await client.get(keys_url, headers=admin_headers())).json()["data"]
            assert len(listed) == 1 and "key" not in listed[0] and "digest" not in listed[0]
            assert user_key not in str(listed)
            r = await client.delete(keys_url + "/000000000000", headers=admin_headers())
            _openai_error(r, 404)

            chat = url + "/v1/chat/completions"
            for _ in range(4):
                assert (await client.post(chat, json=BODY, headers=_bearer(user_key))).is_success
            await asyncio.sleep(0.3)  # the writer flushes every 50 ms
            usage = await client.get(
                url + "/admin/usage?group_by=tenant,model", headers=admin_headers()
            )
            rows = usage.json()["data"]
            assert rows == [
                {
                    "tenant": "acme",
                    "model": MODEL,
                    "requests": 4,
                    "prompt_tokens": 28,
                    "completion_tokens": 12,
                    "cached_tokens": 0,
                    "cost_usd": 0.0,
                }
            ]
            csv = await client.get(
                url + "/admin/usage?group_by=key&format=csv", headers=admin_headers()
            )
            assert csv.text.splitlines()[0].startswith("key,requests")
            bad = await client.get(url + "/admin/usage?group_by=colour", headers=admin_headers())
            assert _openai_error(bad, 400)["param"] == "group_by"
    finally:
        await engine.stop()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_cancelled_stream_releases_its_concurrency_slot_at_once(
    tmp_path: Path, backend: str, redis_prefix: str
) -> None:
    engine = await EngineDouble(chunks=200, chunk_delay=0.02).start()
    limits = {"admission.limits.backend": backend, "admission.limits.redis_prefix": redis_prefix}
    config = governed_config([engine.url], tmp_path, **limits)
    try:
        async with governed_gateway(config) as (url, _), httpx.AsyncClient() as client:
            key = (await _key(client, url, concurrency=1))["key"]
            chat = url + "/v1/chat/completions"
            stream = {**BODY, "stream": True}
            async with client.stream("POST", chat, json=stream, headers=_bearer(key)) as r:
                assert r.status_code == 200
                chunks = r.aiter_bytes()
                await chunks.__anext__()  # the stream is flowing and stays open
                busy = await client.post(chat, json=BODY, headers=_bearer(key))
                err = _openai_error(busy, 429)
                assert err["type"] == "concurrency"
                await chunks.aclose()
            # The client went away mid-stream: its slot is free immediately.
            for _ in range(20):
                r = await client.post(chat, json=BODY, headers=_bearer(key))
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert r.status_code == 200
    finally:
        await engine.stop()


async def test_audit_rows_and_registry_metadata(tmp_path: Path) -> None:
    engine = await EngineDouble().start()
    registry = [
        {
            "name": MODEL,
            "version": "1.2",
            "revision": "rev9",
            "weights_digest": "sha256:abc",
            "context_length": 4096,
            "pools": ["default"],
            "prices": {"input_per_m": 1.0, "output_per_m": 2.0},
        }
    ]
    config = governed_config(
        [engine.url],
        tmp_path,
        **{"governance.registry": registry, "governance.store_text_tenants": ["acme"]},
    )
    try:
        async with governed_gateway(config) as (url, gw), httpx.AsyncClient() as client:
            models = (await client.get(url + "/v1/models")).json()["data"]
            entry = next(m for m in models if m["id"] == MODEL)
            assert entry["max_model_len"] == 4096
            assert entry["metadata"]["weights_digest"] == "sha256:abc"
            key = await _key(client, url)
            body = {
                **BODY,
                "messages": [{"role": "user", "content": "mail me at bob@example.com"}],
                "temperature": 0.3,
            }
            r = await client.post(
                url + "/v1/chat/completions", json=body, headers=_bearer(key["key"])
            )
            assert r.status_code == 200
            request_id = r.headers["x-request-id"]
            await asyncio.sleep(0.3)
            engine_db = gw._sluice_database.engine  # type: ignore[attr-defined]
            async with engine_db.connect() as conn:
                row = (
                    (
                        await conn.execute(
                            sa.select(audit_log).where(audit_log.c.request_id == request_id)
                        )
                    )
                    .one()
                    ._mapping
                )
    finally:
        await engine.stop()
    assert row["tenant"] == "acme" and row["user"] == "alice" and row["key_id"] == key["id"]
    assert row["model_requested"] == MODEL and row["model_served"] == MODEL
    assert row["model_version"] == "1.2" and row["weights_digest"] == "sha256:abc"
    assert row["endpoint"] == "e0" and row["routing_reason"]
    assert len(row["prompt_hash"]) == 64
    assert row["sampling"] == {"max_tokens": 10, "temperature": 0.3}
    assert (row["prompt_tokens"], row["completion_tokens"], row["status"]) == (7, 3, 200)
    assert row["cost_usd"] == (7 * 1.0 + 3 * 2.0) / 1e6
    assert row["e2e_ms"] > 0 and row["finish_reason"] == "length"
    assert row["prompt_text"] == "user: mail me at [EMAIL]"
    assert row["response_text"] == "xxx"  # the engine double's answer, kept for this tenant


async def test_queue_holds_then_times_out_and_bad_priority_header(tmp_path: Path) -> None:
    engine = await EngineDouble(chunks=100, chunk_delay=0.05).start()
    config = governed_config(
        [engine.url],
        tmp_path,
        **{"admission.queue.max_in_flight": 1, "admission.queue.max_wait_s": 0.4},
    )
    try:
        async with governed_gateway(config) as (url, _), httpx.AsyncClient(timeout=20) as client:
            trusted = (await _key(client, url, trusted=True))["key"]
            chat = url + "/v1/chat/completions"
            bad = await client.post(
                chat, json=BODY, headers={**_bearer(trusted), "x-sluice-priority": "urgent"}
            )
            assert _openai_error(bad, 400)["param"] == "x-sluice-priority"
            stream = {**BODY, "stream": True}
            async with client.stream("POST", chat, json=stream, headers=_bearer(trusted)) as r:
                chunks = r.aiter_bytes()
                await chunks.__anext__()  # the only slot on the engine is now taken
                t0 = asyncio.get_running_loop().time()
                held = await client.post(
                    chat, json=BODY, headers={**_bearer(trusted), "x-sluice-priority": "critical"}
                )
                waited = asyncio.get_running_loop().time() - t0
                err = _openai_error(held, 503)
                assert err["code"] == "queue_timeout" and int(held.headers["retry-after"]) >= 1
                assert waited >= 0.35
                await chunks.aclose()
            # Capacity is back: the next request passes straight through.
            ok = await client.post(chat, json=BODY, headers=_bearer(trusted))
            assert ok.status_code == 200
    finally:
        await engine.stop()
