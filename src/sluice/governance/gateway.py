"""Governance inside the gateway: registry metadata in /v1/models and one audit row per request
(journaled in the settle hook as a compact row, expanded and inserted off the request path).

Installed by ``sluice.api.extensions``.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from sluice.api.context import RequestContext
from sluice.config import ModelConfig
from sluice.governance.config import GovernanceConfig
from sluice.governance.db import Database, database_for
from sluice.governance.ledger import AuditWriter, prompt_hash, raw
from sluice.governance.ledger import metrics as ledger_metrics
from sluice.governance.ledger import process as writer_process
from sluice.governance.ledger.record import prompt_text
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
        self._models = raw.models_from_header(orjson.loads(raw.header(registry.entries())))

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
            header=raw.header(self.registry.entries()),
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
            self.writer.submit_raw(self.raw_row(ctx))

    def raw_row(self, ctx: RequestContext) -> list[Any]:
        """The compact journal row (``ledger/raw.py``): only what is at hand now; the writer
        computes the rest (served model, version, digest, routing explanation, cost)."""
        usage = ctx.usage
        prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        if not usage.known and ctx.first_byte_at is not None:
            # A stream cut short before its usage report: what was produced, not zero.
            seen = streamed_usage(ctx)
            if seen is not None:
                prompt_tokens, completion_tokens = seen
        decision = ctx.decision
        if decision is None:
            route = upstream = None
        else:
            route = (
                decision.endpoint.id,
                decision.reason,
                decision.scores,
                decision.pool,
                decision.cached_tokens,
                decision.load_adapter,
            )
            upstream = decision.upstream_model
        endpoint = ctx.endpoint
        facts = ctx.facts
        body = ctx.body
        extra = ctx.extra
        started = ctx.started
        first, finished = ctx.first_byte_at, ctx.finished_at
        prompt = response = None
        if self._store_text and ctx.tenant in self._store_text and body:
            prompt = redact(prompt_text(body))
            text = extra.get("response_text")
            response = redact(text) if isinstance(text, str) else None
        return [
            raw.RAW_TAG,
            ctx.request_id,
            ctx.started_wall or time.time(),
            ctx.status,
            ctx.tenant,
            ctx.user,
            ctx.api_key_id,
            ctx.model,
            upstream,
            facts.adapter if facts is not None else None,
            endpoint.id if endpoint is not None else None,
            route,
            ctx.error,
            prompt_hash(body) if body else None,
            # The sampling parameters in the request's own order (the writer orders them).
            {k: v for k, v in body.items() if k in _SAMPLING} if body else None,
            prompt_tokens,
            completion_tokens,
            usage.cached_tokens,
            None if first is None else first - started,
            None if finished is None else finished - started,
            extra.get(_QUEUE_WAIT),
            extra.get("finish_reason"),
            ctx.outcome,
            extra.get("guardrails"),
            prompt,
            response,
        ]

    def record(self, ctx: RequestContext) -> dict[str, Any]:
        """The audit row of ``ctx`` as the writer will insert it (its compact row, expanded)."""
        return raw.expand(self.raw_row(ctx), self._models)


_SAMPLING = raw.SAMPLING_KEYS
_QUEUE_WAIT = "admission.queue_wait_s"
