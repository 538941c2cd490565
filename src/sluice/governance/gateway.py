"""Governance inside the gateway: registry metadata in /v1/models and one audit row per request
(built in the settle hook, written by the batched writer off the request path).

Installed by ``sluice.api.extensions``.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sluice.api.context import RequestContext
from sluice.config import ModelConfig
from sluice.governance.config import GovernanceConfig
from sluice.governance.db import Database, database_for
from sluice.governance.ledger import AuditWriter, prompt_hash, sampling
from sluice.governance.ledger import metrics as ledger_metrics
from sluice.governance.ledger import process as writer_process
from sluice.governance.ledger.record import prompt_text
from sluice.governance.prices import cost
from sluice.governance.redact import redact
from sluice.governance.registry import Registry
from sluice.governance.streamed import streamed_usage

if TYPE_CHECKING:
    from sluice.api.gateway import Gateway

log = structlog.get_logger("sluice.governance")
_WRITER_EXIT_S = 10.0
_METRICS = (
    ledger_metrics.WRITTEN,
    ledger_metrics.SPILLED,
    ledger_metrics.REPLAYED,
    ledger_metrics.CORRUPT,
    ledger_metrics.QUEUE_DEPTH,
    ledger_metrics.PENDING_SEGMENTS,
    ledger_metrics.LAG,
    ledger_metrics.DB_UP,
)


def install(gateway: Gateway) -> None:
    cfg: GovernanceConfig = gateway.config.governance
    registry = Registry(cfg.registry)
    _advertise(gateway, registry)
    if not cfg.ledger.enabled:
        return
    ledger = Ledger(gateway, cfg, registry, database_for(gateway, cfg.database_url))
    gateway.extensions_state = getattr(gateway, "extensions_state", {})  # type: ignore[attr-defined]
    gateway.extensions_state["ledger"] = ledger  # type: ignore[attr-defined]
    gateway.on_startup.append(ledger.start)
    if cfg.store_text_tenants:
        gateway.hooks.admit.append(ledger.mark_text)
    # First of all settle hooks: the row is journaled (a synchronous local write) in the same
    # loop step as the response's last byte, before any hook awaits I/O, so a kill -9 right after
    # a client got its answer still leaves the row on disk.
    gateway.hooks.settle.insert(0, ledger.settle)
    for metric in _METRICS:
        gateway.metrics.registry.register(metric)


def _advertise(gateway: Gateway, registry: Registry) -> None:
    """Registry entries appear in /v1/models with their version, digest, pools and prices."""
    for name in registry.names():
        entry = registry.get(name)
        assert entry is not None
        meta = entry.openai_object()["sluice"]
        existing = gateway.models.get(name)
        if existing is None:
            gateway.models[name] = ModelConfig(
                name=name,
                owned_by=entry.owned_by,
                max_model_len=entry.context_length,
                metadata=meta,
            )
        else:
            gateway.models[name] = existing.model_copy(
                update={
                    "max_model_len": existing.max_model_len or entry.context_length,
                    "metadata": {**meta, **existing.metadata},
                }
            )


class Ledger:
    def __init__(
        self, gateway: Gateway, cfg: GovernanceConfig, registry: Registry, db: Database
    ) -> None:
        self.gw = gateway
        self.cfg = cfg
        self.registry = registry
        self.db = db
        self.writer: AuditWriter | None = None
        self._process: subprocess.Popen[str] | None = None
        self._store_text = frozenset(cfg.store_text_tenants)

    async def start(self) -> None:
        led = self.cfg.ledger
        inline = led.writer == "inline"
        self.writer = AuditWriter(
            self.db.engine,
            led.spill_dir,
            batch_size=led.batch_size,
            flush_interval=led.flush_interval_s,
            max_queue=led.max_queue,
            replay_interval=led.replay_interval_s,
            inline=inline,
        )
        if not inline:
            # Started before the journal: it replays what a previous (dead) gateway left.
            self._process = await asyncio.to_thread(
                writer_process.spawn,
                self.db.url,
                Path(led.spill_dir),
                led.flush_interval_s,
                led.replay_interval_s,
            )
        await self.writer.start()
        self.db.before_stop.append(self.close)

    async def close(self) -> None:
        """Seal (or, inline, write) what is journaled; the writer process inserts it and ends."""
        if self.writer is not None:
            await self.writer.close()
        proc, self._process = self._process, None
        if proc is not None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, _WRITER_EXIT_S)
            except subprocess.TimeoutExpired:
                # Still inserting (a slow database): it finishes on its own, its parent gone.
                log.warning("ledger writer process still busy at shutdown", pid=proc.pid)

    async def mark_text(self, ctx: RequestContext) -> None:
        """Admit hook (after authentication): ask the proxy to keep this tenant's answer text."""
        if ctx.tenant is not None and ctx.tenant in self._store_text:
            ctx.extra["store_text"] = True

    async def settle(self, ctx: RequestContext) -> None:
        if self.writer is not None:
            self.writer.submit(self.record(ctx))

    def record(self, ctx: RequestContext) -> dict[str, Any]:
        decision = ctx.decision
        served = getattr(decision, "upstream_model", None) or ctx.model
        entry = self.registry.get(served) or self.registry.get(ctx.model)
        usage = ctx.usage
        prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        if not usage.known and ctx.first_byte_at is not None:
            # A stream cut short before its usage report: what was produced, not zero.
            seen = streamed_usage(ctx)
            if seen is not None:
                prompt_tokens, completion_tokens = seen
        body: dict[str, Any] = ctx.body
        store = ctx.tenant is not None and ctx.tenant in self._store_text
        response_text = ctx.extra.get("response_text")
        wait = ctx.extra.get("admission.queue_wait_s")
        # The row as a plain dict (the columns of ``AuditRecord``): no record object per request.
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
            "prompt_hash": prompt_hash(body) if body else None,
            "sampling": sampling(body) or None,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cached_tokens": usage.cached_tokens,
            "ttft_ms": None if ctx.ttft is None else ctx.ttft * 1000,
            "e2e_ms": None if ctx.e2e is None else ctx.e2e * 1000,
            "queue_ms": None if wait is None else wait * 1000,
            "finish_reason": ctx.extra.get("finish_reason") or _finish(ctx),
            "guardrails": ctx.extra.get("guardrails"),
            "cost_usd": cost(
                entry.prices if entry else None,
                prompt_tokens,
                completion_tokens,
                usage.cached_tokens,
            ),
            "prompt_text": redact(prompt_text(body)) if store and body else None,
            "response_text": redact(response_text)
            if store and isinstance(response_text, str)
            else None,
        }


def _finish(ctx: RequestContext) -> str | None:
    if ctx.outcome == "cancelled":
        return "cancelled"
    if ctx.outcome in ("rejected", "upstream_error"):
        return "error"
    return None
