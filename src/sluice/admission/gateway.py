"""Admission inside the gateway: the admit hook (auth, model check, priority, limits, queue) and
the settle hook (real tokens back to the limiter, slots freed, the queue woken).

Installed by ``sluice.api.extensions`` when ``admission.enabled`` (the default).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog
from redis.asyncio import Redis

from sluice.admission.admission import Admission, Rejection, Ticket
from sluice.admission.auth import Authenticator
from sluice.admission.config import AdmissionConfig
from sluice.admission.gate import QueueGate, QueueRejected
from sluice.admission.jwt_auth import JwtVerifier
from sluice.admission.key_store import KeyStore
from sluice.admission.limits.base import Limiter
from sluice.admission.limits.failover import FailoverLimiter
from sluice.admission.limits.memory import MemoryLimiter
from sluice.admission.limits.redis import RedisLimiter
from sluice.admission.limits.resp import RespClient
from sluice.admission.metrics import (
    ADMISSIONS,
    LIMITER_BACKEND_ERRORS,
    LIMITER_DEGRADED,
    QUEUE_DEPTH,
    QUEUE_REJECTIONS,
    QUEUE_WAIT,
)
from sluice.admission.priority import Priority, parse
from sluice.admission.priority_queue import QueueLimits
from sluice.api.context import RequestContext
from sluice.api.errors import ApiError
from sluice.governance.db import Database, database_for
from sluice.governance.streamed import streamed_usage

if TYPE_CHECKING:
    from sluice.api.gateway import Gateway

log = structlog.get_logger("sluice.admission")

TICKET = "admission.ticket"
PRINCIPAL = "admission.principal"
QUEUE_WAIT_KEY = "admission.queue_wait_s"
_METRICS = (
    ADMISSIONS,
    LIMITER_BACKEND_ERRORS,
    LIMITER_DEGRADED,
    QUEUE_DEPTH,
    QUEUE_REJECTIONS,
    QUEUE_WAIT,
)


def install(gateway: Gateway) -> None:
    cfg: AdmissionConfig = gateway.config.admission
    if not cfg.enabled:
        return
    runtime = AdmissionRuntime(gateway, cfg)
    gateway.extensions_state = getattr(gateway, "extensions_state", {})  # type: ignore[attr-defined]
    gateway.extensions_state["admission"] = runtime  # type: ignore[attr-defined]
    gateway.hooks.admit.append(runtime.admit)
    gateway.hooks.settle.insert(0, runtime.settle)  # free capacity before anything else
    gateway.on_startup.append(runtime.start)
    gateway.on_shutdown.append(runtime.stop)
    for metric in _METRICS:
        gateway.metrics.registry.register(metric)


def _error(rej: Rejection | QueueRejected) -> ApiError:
    if isinstance(rej, QueueRejected):
        return ApiError(
            rej.status,
            str(rej),
            type="service_unavailable" if rej.status == 503 else "rate_limit_error",
            code=rej.code,
            headers=[(b"retry-after", str(max(1, round(rej.retry_after))).encode())],
        )
    return ApiError(
        rej.status, rej.message, type=rej.type, param=rej.param, code=rej.code, headers=rej.headers
    )


class AdmissionRuntime:
    def __init__(self, gateway: Gateway, cfg: AdmissionConfig) -> None:
        self.gw = gateway
        self.cfg = cfg
        self.db: Database | None = None
        if cfg.auth.enabled:
            self.db = database_for(gateway, gateway.config.governance.database_url)
        self.admission = Admission(cfg, None, None)
        self.gate: QueueGate | None = None
        if cfg.queue.enabled:
            q = cfg.queue
            limits = QueueLimits(
                max_total=q.max_total,
                max_per_priority={parse(k): v for k, v in q.max_per_priority.items()},
                aging_s=q.aging_s,
                max_wait_s=q.max_wait_s,
            )
            self.gate = QueueGate(self.saturated, limits, q.tick_s, clock=gateway.clock)
        self.redis: Redis | None = None
        self._priority_key = cfg.priority_header.lower().encode("latin-1")
        self._jwks_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        authenticator = None
        if self.db is not None:
            auth = self.cfg.auth
            verifier = JwtVerifier(auth.jwt) if auth.jwt.enabled else None
            if verifier is not None and auth.jwt.jwks_url:
                await verifier.refresh_from_url()
                self._jwks_task = asyncio.create_task(
                    self._refresh_jwks(verifier, auth.jwt.refresh_s), name="sluice-jwks"
                )
            authenticator = Authenticator(
                KeyStore(self.db.engine),
                verifier,
                cache_ttl=auth.key_cache_ttl_s,
                cache_size=auth.key_cache_size,
            )
        self.admission = Admission(self.cfg, authenticator, self._limiter())

    def _limiter(self) -> Limiter | None:
        limits = self.cfg.limits
        if not limits.enabled:
            return None
        if limits.backend == "memory":
            return MemoryLimiter(self.gw.clock)
        self.redis = Redis.from_url(
            limits.redis_url,
            socket_timeout=limits.redis_timeout_s,
            socket_connect_timeout=limits.redis_timeout_s,
        )
        # Script calls through the lean client where the URL allows (plain redis://).
        lean = RespClient.from_url(limits.redis_url, limits.redis_timeout_s)
        return FailoverLimiter(
            RedisLimiter(self.redis, limits.redis_prefix, lean),
            mode=limits.on_redis_error,
            retry_interval=limits.redis_retry_s,
            clock=self.gw.clock,
        )

    @staticmethod
    async def _refresh_jwks(verifier: JwtVerifier, every: float) -> None:
        """Keys rotate at the identity provider: re-read the JWKS; keep the old set on errors."""
        while True:
            await asyncio.sleep(every)
            try:
                await verifier.refresh_from_url()
            except Exception as exc:
                log.warning("jwks refresh failed", error=type(exc).__name__)

    async def stop(self) -> None:
        if self._jwks_task is not None:
            self._jwks_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._jwks_task
            self._jwks_task = None
        if self.gate is not None:
            await self.gate.close()
        if self.admission.limiter is not None:
            await self.admission.limiter.close()

    # -- hooks ----------------------------------------------------------------------------------

    async def admit(self, ctx: RequestContext) -> None:
        adm = self.admission
        headers = ctx.headers
        try:
            value = headers.get(b"authorization")
            authorization = None if value is None else value.decode("latin-1")
            # A credential verified recently is a dict lookup, without an await.
            principal = adm.cached_principal(authorization) or await adm.authenticate(authorization)
            adm.authorize(principal, ctx.model)
            extra = ctx.extra
            if principal is not None:
                ctx.tenant, ctx.user, ctx.api_key_id = (
                    principal.tenant,
                    principal.user,
                    principal.key_id,
                )
                extra[PRINCIPAL] = principal
            value = headers.get(self._priority_key)
            priority = adm.priority(principal, None if value is None else value.decode("latin-1"))
            ctx.priority = _ROUTING_PRIORITY[priority]  # routing facts: higher is sooner
            if adm.limiter is not None:
                ticket = await adm.reserve(
                    ctx.request_id,
                    principal,
                    ctx.model,
                    prompt_tokens=len(ctx.raw_body) // 4,
                    max_tokens=_max_tokens(ctx.body),
                )
                if ticket is not None:
                    extra[TICKET] = ticket
                    ctx.response_headers.extend(ticket.headers)
            gate = self.gate
            if gate is not None:
                # Nothing waiting and capacity free: through at once (no await).
                extra[QUEUE_WAIT_KEY] = (
                    0.0 if gate.free(ctx.model) else await gate.enter(ctx.model, priority)
                )
        except (Rejection, QueueRejected) as rej:
            raise _error(rej) from None

    async def settle(self, ctx: RequestContext) -> None:
        ticket: Ticket | None = ctx.extra.get(TICKET)
        try:
            if ticket is not None:
                served = ctx.attempts > 0 or ctx.endpoint is not None
                await self.admission.settle(ticket, _actual_tokens(ctx, ticket), served)
        finally:
            if self.gate is not None:
                self.gate.poke()

    def saturated(self, model: str) -> bool:
        """True while every available endpoint that serves ``model`` is saturated."""
        q = self.cfg.queue
        now = self.gw.clock()
        seen = False
        for s in self.gw.fleet.states:
            if not (s.endpoint.serves(model) and s.available(now)):
                continue
            seen = True
            busy = (
                s.waiting >= q.engine_waiting
                or s.kv_usage >= q.kv_usage
                or (q.max_in_flight is not None and s.in_flight >= q.max_in_flight)
            )
            if not busy:
                return False
        return seen


# Priority -> RequestContext.priority (routing facts: higher is sooner).
_ROUTING_PRIORITY = {p: int(Priority.BATCH - p) for p in Priority}


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _actual_tokens(ctx: RequestContext, ticket: Ticket) -> int | None:
    """The real count when the engine reported it; the prompt alone when nothing was generated;
    for a stream cut short (no usage report), the prompt and the tokens streamed so far;
    otherwise unknown (the whole estimate stays charged)."""
    if ctx.usage.known:
        return ctx.usage.prompt_tokens + ctx.usage.completion_tokens
    if ctx.first_byte_at is None:
        return len(ctx.raw_body) // 4
    seen = streamed_usage(ctx)
    return None if seen is None else seen[0] + seen[1]
