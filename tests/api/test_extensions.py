"""Admit and settle hooks, extension routes and lifecycle, through a running gateway."""

from __future__ import annotations

import httpx

from tests.api import sample_extension
from tests.api.engine_double import MODEL, EngineDouble
from tests.api.helpers import gateway_config, running_gateway

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def test_hooks_admit_reject_and_settle_exactly_once_per_request() -> None:
    sample_extension.SETTLED.clear()
    sample_extension.EVENTS.clear()
    engine = await EngineDouble().start()
    config = gateway_config([engine.url])
    try:
        async with (
            running_gateway(config, ("tests.api.sample_extension",)) as (url, _),
            httpx.AsyncClient() as client,
        ):
            chat = url + "/v1/chat/completions"
            ok = await client.post(chat, json=BODY, headers={"x-tenant": "acme"})
            denied = await client.post(chat, json=BODY, headers={"x-deny": "1"})
            engine.mode, engine.status = "status", 400
            refused = await client.post(chat, json=BODY, headers={"x-tenant": "acme"})
            await client.post(chat, content=b"{broken")  # never parsed: not settled
            hello = await client.get(url + "/admin/hello")
    finally:
        await engine.stop()
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining"] == "41"
    assert denied.status_code == 429 and denied.headers["retry-after"] == "7"
    assert denied.json()["error"]["code"] == "rate_limited"
    assert refused.status_code == 400
    settled = sample_extension.SETTLED
    assert [(c.status, c.outcome) for c in settled] == [
        (200, "ok"),
        (429, "rejected"),
        (400, "ok"),  # the engine's own answer
    ]
    assert settled[0].usage.completion_tokens == 3 and settled[0].tenant == "acme"
    assert not settled[1].admitted and settled[0].admitted
    assert len(engine.requests) == 2  # the denied request never reached it
    assert hello.json() == {"tenants": ["", "acme"]}
    assert sample_extension.EVENTS == ["started", "stopped"]
