"""Compact journal rows: the gateway journals what it has at settle, the writer computes the rest.
Whatever path a row takes (journal file, replay by another process, inline batch, writer process),
the inserted audit row equals the row the gateway used to build in full at settle."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sluice.api.context import RequestContext
from sluice.governance.config import GovernanceConfig
from sluice.governance.gateway import Ledger
from sluice.governance.ledger import AuditWriter, journal, raw
from sluice.governance.ledger.process import serve
from sluice.governance.ledger.record import AuditRecord, prompt_text, sampling
from sluice.governance.ledger.schema import COLUMNS, audit_log
from sluice.governance.prices import cost
from sluice.governance.redact import redact
from sluice.governance.registry import ModelEntry, Registry
from sluice.governance.streamed import streamed_usage
from sluice.routing import Decision, RequestFacts
from sluice.routing.endpoint import Endpoint, EndpointState
from sluice.upstream.sse import STREAM_TAP, StreamTap

REGISTRY = Registry(
    [
        ModelEntry(
            name="llama",
            version="3.1",
            weights_digest="sha256:abc",
            prices={"input_per_m": 0.5, "output_per_m": 1.5, "cached_per_m": 0.1},
        ),
        ModelEntry(
            name="llama-v2",
            version="3.2",
            weights_digest="sha256:def",
            prices={
                "input_per_m": 1.0,
                "output_per_m": 2.0,
                "gpu_hour_usd": 2.0,
                "gpu_tokens_per_hour": 1e6,
            },
        ),
    ]
)
MESSAGES = [{"role": "user", "content": "Mail bob@example.com, say hi.", "name": "b"}]


def reference_row(ledger: Ledger, ctx: RequestContext) -> dict[str, Any]:
    """The audit row as the gateway built it in full at settle before compact rows (the code
    of ``Ledger.record`` at 5e60279), kept here as the reference."""
    registry = ledger.registry
    decision = ctx.decision
    served = getattr(decision, "upstream_model", None) or ctx.model
    entry = registry.get(served) or registry.get(ctx.model)
    usage = ctx.usage
    prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
    if not usage.known and ctx.first_byte_at is not None:
        seen = streamed_usage(ctx)
        if seen is not None:
            prompt_tokens, completion_tokens = seen
    body = ctx.body
    store = ctx.tenant is not None and ctx.tenant in ledger._store_text
    response_text = ctx.extra.get("response_text")
    wait = ctx.extra.get("admission.queue_wait_s")
    if ctx.extra.get("finish_reason"):
        finish = ctx.extra["finish_reason"]
    elif ctx.outcome == "cancelled":
        finish = "cancelled"
    elif ctx.outcome in ("rejected", "upstream_error"):
        finish = "error"
    else:
        finish = None
    canonical = orjson.dumps(
        body.get("messages") if "messages" in body else body.get("prompt"),
        option=orjson.OPT_SORT_KEYS,
    )
    return {
        "request_id": ctx.request_id,
        "ts": ctx.started_wall or time.time(),
        "status": ctx.status,
        "tenant": ctx.tenant,
        "user": ctx.user,
        "key_id": ctx.api_key_id,
        "model_requested": ctx.model,
        "model_served": served if ctx.endpoint is not None else None,
        "model_version": entry.version if entry else None,
        "weights_digest": entry.weights_digest if entry else None,
        "adapter": ctx.facts.adapter if ctx.facts is not None else None,
        "endpoint": ctx.endpoint.id if ctx.endpoint is not None else None,
        "routing_reason": decision.explain() if decision is not None else ctx.error,
        "prompt_hash": hashlib.sha256(canonical).hexdigest() if body else None,
        "sampling": sampling(body) or None,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "ttft_ms": None if ctx.ttft is None else ctx.ttft * 1000,
        "e2e_ms": None if ctx.e2e is None else ctx.e2e * 1000,
        "queue_ms": None if wait is None else wait * 1000,
        "finish_reason": finish,
        "guardrails": ctx.extra.get("guardrails"),
        "cost_usd": cost(
            entry.prices if entry else None, prompt_tokens, completion_tokens, usage.cached_tokens
        ),
        "prompt_text": redact(prompt_text(body)) if store and body else None,
        "response_text": redact(response_text)
        if store and isinstance(response_text, str)
        else None,
    }


def _ctx(request_id: str, path: str = "/v1/chat/completions", **body: Any) -> RequestContext:
    body = {"model": "llama", **body}
    return RequestContext(
        request_id=request_id,
        path=path,
        headers={},
        client=None,
        started=100.0,
        started_wall=1_700_000_000.25,
        raw_body=orjson.dumps(body),
        body=body,
        model="llama",
        tenant="acme",
        user="alice",
        api_key_id="0123456789ab",
    )


def _routed(ctx: RequestContext, **decision: Any) -> RequestContext:
    state = EndpointState(Endpoint(id="e0", url="http://e0"))
    ctx.decision = Decision(state, "affinity_cost", **decision)
    ctx.endpoint = state
    ctx.facts = RequestFacts(model=ctx.model, prompt_tokens=12, adapter=decision.get("pool"))
    ctx.attempts = 1
    return ctx


def contexts() -> list[RequestContext]:
    out = []
    # A whole answer, routed with scores, a version rename and cached tokens.
    ctx = _routed(
        _ctx("whole", messages=MESSAGES, max_tokens=30, seed=7, temperature=0.2, top_p=0.9),
        scores={"e0": 0.12345, "e1": 7.0},
        cached_tokens=64,
        upstream_model="llama-v2",
        pool="h100",
    )
    ctx.usage.update(
        {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 64},
        }
    )
    ctx.status, ctx.outcome = 200, "ok"
    ctx.first_byte_at, ctx.finished_at = 100.05, 100.25
    ctx.extra["finish_reason"] = "length"
    ctx.extra["admission.queue_wait_s"] = 0.003
    ctx.extra["guardrails"] = {"input": "pass", "output": ["pii"]}
    out.append(ctx)
    # A stream with its usage report (completions path, prompt string, no scores).
    ctx = _routed(
        _ctx("stream", "/v1/completions", prompt="Hi", stream=True, stop=["\n"]),
        load_adapter="sql-lora",
    )
    ctx.stream = True
    ctx.usage.update({"prompt_tokens": 3, "completion_tokens": 5})
    ctx.status, ctx.outcome = 200, "ok"
    ctx.first_byte_at, ctx.finished_at = 100.01, 100.2
    ctx.extra["finish_reason"] = "stop"
    out.append(ctx)
    # A stream the client cut short before its usage report: tokens from the tap.
    ctx = _routed(_ctx("cut", messages=MESSAGES, stream=True, max_completion_tokens=50))
    ctx.stream = True
    tap = StreamTap(strip_usage=True)
    tap.feed(b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n' + b'data: {"x":1}\n\n' * 7)
    ctx.extra[STREAM_TAP] = tap
    ctx.status, ctx.outcome = 499, "cancelled"
    ctx.first_byte_at, ctx.finished_at = 100.02, 100.03
    out.append(ctx)
    # Rejected before routing (no decision, no endpoint): the error is the reason.
    ctx = _ctx("rejected", messages=MESSAGES, temperature=1)
    ctx.status, ctx.outcome, ctx.error = 429, "rejected", "Rate limit reached"
    ctx.finished_at = 100.001
    out.append(ctx)
    # An engine failure mid-way, unknown model in the registry.
    ctx = _routed(_ctx("failed", messages=MESSAGES))
    ctx.model = ctx.body["model"] = "unregistered"
    ctx.status, ctx.outcome, ctx.error = 502, "upstream_error", "engine went away"
    ctx.finished_at = 100.5
    out.append(ctx)
    # A tenant whose text is stored (redacted).
    ctx = _routed(_ctx("text", messages=MESSAGES, n=1))
    ctx.tenant = "textco"
    ctx.usage.update({"prompt_tokens": 9, "completion_tokens": 2})
    ctx.status, ctx.outcome = 200, "ok"
    ctx.extra["response_text"] = "Hi, card 4111 1111 1111 1111"
    ctx.finished_at = 100.1
    out.append(ctx)
    return out


def _ledger() -> Ledger:
    cfg = GovernanceConfig(store_text_tenants=["textco"])
    return Ledger(None, cfg, REGISTRY, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("ctx", contexts(), ids=lambda c: c.request_id)
def test_a_journaled_compact_row_expands_to_the_row_built_at_settle_before(
    ctx: RequestContext,
) -> None:
    ledger = _ledger()
    want = reference_row(ledger, ctx)
    line = orjson.dumps(ledger.raw_row(ctx), option=orjson.OPT_APPEND_NEWLINE)
    models = raw.models_from_header(orjson.loads(raw.header(REGISTRY.entries())))
    got = raw.expand(orjson.loads(line), models)
    assert got == want
    assert list(got) == list(AuditRecord(request_id="x", ts=0.0, status=0).row())
    assert ledger.record(ctx) == want
    # What the insert binds: the same values in the table's column order, JSON as text.
    params = raw.values(orjson.loads(line), models, encode_json=True)
    assert params == raw.row_params(want)
    assert dict(zip(COLUMNS, params, strict=True))["sampling"] == (
        None if want["sampling"] is None else orjson.dumps(want["sampling"]).decode()
    )


def test_the_row_carries_no_prompt_text_unless_the_tenant_stores_text() -> None:
    ledger = _ledger()
    for ctx in contexts():
        line = orjson.dumps(ledger.raw_row(ctx))
        assert (b"bob@example.com" in line) is False  # never raw, even for textco
        assert (b"[EMAIL]" in line) == (ctx.tenant == "textco")


@pytest.mark.parametrize(
    "decision",
    [
        {},
        {"scores": {"a": 1.0, "b": 0.000123456, "c": 12345678.0, "d": 3}},
        {
            "scores": {"a": 0.5},
            "pool": "p",
            "upstream_model": "m2",
            "cached_tokens": 16,
            "load_adapter": "lora",
        },
        {"cached_tokens": 0, "pool": "p"},
    ],
)
def test_the_writers_routing_explanation_is_the_decisions_own(decision: dict[str, Any]) -> None:
    state = EndpointState(Endpoint(id="e7", url="http://e7"))
    d = Decision(state, "prefix_affinity", **decision)
    route = [
        "e7",
        d.reason,
        orjson.loads(orjson.dumps(d.scores)),
        d.pool,
        d.cached_tokens,
        d.load_adapter,
    ]
    assert raw.explain(route, d.upstream_model) == d.explain()


async def _rows(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(audit_log))
        return {r._mapping["request_id"]: dict(r._mapping) for r in result}


def _db_form(row: dict[str, Any]) -> dict[str, Any]:
    return {c: row[c] for c in COLUMNS}


@pytest.mark.parametrize("mode", ["inline", "process"])
async def test_rows_journaled_compact_reach_the_database_as_built_before(
    sqlite_engine: AsyncEngine, tmp_path: Path, mode: str
) -> None:
    ledger = _ledger()
    spill = tmp_path / "spill"
    header = raw.header(REGISTRY.entries())
    writer = AuditWriter(
        sqlite_engine, spill, flush_interval=0.05, inline=mode == "inline", header=header
    )
    await writer.start()
    stop = asyncio.Event()
    task = None
    if mode == "process":  # the writer process's loop, in this process
        task = asyncio.create_task(serve(str(sqlite_engine.url), spill, 0.05, 0.1, stop=stop))
    ctxs = contexts()
    for ctx in ctxs:
        writer.submit_raw(ledger.raw_row(ctx))
    want = {c.request_id: _db_form(reference_row(ledger, c)) for c in ctxs}
    got: dict[str, dict[str, Any]] = {}
    for _ in range(100):
        await asyncio.sleep(0.05)
        got = await _rows(sqlite_engine)
        if len(got) == len(want):
            break
    await writer.close()
    stop.set()
    if task is not None:
        await task
    assert got == want


async def test_a_segment_is_expanded_with_the_registry_it_was_journaled_with(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    """A replay after a restart with another registry still records the version, digest and
    price that were current when the request was served."""
    ledger = _ledger()
    spill = tmp_path / "spill"
    old = AuditWriter(
        sqlite_engine,
        spill,
        flush_interval=60,
        inline=False,
        header=raw.header(REGISTRY.entries()),
    )
    await old.start()
    ctx = contexts()[0]
    old.submit_raw(ledger.raw_row(ctx))
    await old.close()  # sealed, left on disk
    (path,) = spill.glob("audit-*.jsonl")
    assert journal.read_rows(path) == [reference_row(ledger, ctx)]
    new = AuditWriter(sqlite_engine, spill, header=raw.header([ModelEntry(name="llama-v2")]))
    await new.start()  # replays with the segment's own header
    await new.close()
    row = (await _rows(sqlite_engine))[ctx.request_id]
    assert row["model_version"] == "3.2" and row["weights_digest"] == "sha256:def"
    assert row["cost_usd"] == pytest.approx(reference_row(ledger, ctx)["cost_usd"])
    assert row["cost_usd"] > 0


def test_a_prefaulted_segment_reads_back_its_rows_alive_or_left_by_a_crash(
    tmp_path: Path,
) -> None:
    """Pages faulted in ahead are zeros after the last row: a live segment (what a replay finds
    after kill -9) and a sealed one read back the same rows."""
    ledger = _ledger()
    header = raw.header(REGISTRY.entries())
    seg = journal.Segment(tmp_path / "audit-1-1-1.jsonl", 1 << 20, header)
    seg.prefault(256 << 10)
    ctxs = contexts()
    for ctx in ctxs:
        seg.write(orjson.dumps(ledger.raw_row(ctx), option=orjson.OPT_APPEND_NEWLINE))
    want = [reference_row(ledger, c) for c in ctxs]
    assert journal.read_rows(seg.path) == want  # still open: zeros follow the rows
    seg.close(delete=False)
    assert journal.read_rows(seg.path) == want
    assert seg.path.stat().st_size == seg.offset
