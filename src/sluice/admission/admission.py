"""Admission: authenticate, authorise the model, pick a priority, reserve limits; settle once.

Framework-free: the gateway hook (``admission/gateway.py``) turns a ``Rejection`` into an
OpenAI-style error response and keeps the ``Ticket`` on the request context until settle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from sluice.admission import priority as prio
from sluice.admission.auth import Authenticator
from sluice.admission.config import AdmissionConfig
from sluice.admission.headers import rate_limit_headers, retry_after
from sluice.admission.limits.base import Limiter
from sluice.admission.limits.buckets import Kind, Plan, Verdict
from sluice.admission.limits.failover import FailoverLimiter
from sluice.admission.limits.memory import MemoryLimiter
from sluice.admission.limits.plan import Planner, estimate_tokens
from sluice.admission.metrics import ADMISSIONS
from sluice.admission.principal import AuthError, Principal
from sluice.admission.priority import Priority

log = structlog.get_logger("sluice.admission")
_ADMITTED = ADMISSIONS.labels("admitted")


class Rejection(Exception):
    """An admission refusal, with everything an OpenAI-style error response needs."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str,
        code: str,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or []


@dataclass(slots=True)
class Ticket:
    request_id: str
    plan: Plan
    backend: str
    estimate: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    settled: bool = False


class Admission:
    def __init__(
        self,
        config: AdmissionConfig,
        authenticator: Authenticator | None,
        limiter: Limiter | None,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.limiter = limiter
        self._tiers = {tier: prio.parse(name) for tier, name in config.tier_priority.items()}
        self._planner = Planner(config.limits)
        # The in-process limiter is called synchronously (no coroutine per request).
        self._memory = limiter if isinstance(limiter, MemoryLimiter) else None

    def cached_principal(self, authorization: str | None) -> Principal | None:
        """The principal of a credential verified recently (no await); None: authenticate."""
        if self.authenticator is None or authorization is None:
            return None
        return self.authenticator.cached(authorization)

    async def authenticate(self, authorization: str | None) -> Principal | None:
        if self.authenticator is None:
            return None
        try:
            return await self.authenticator.authenticate(authorization)
        except AuthError as err:
            if err.status == 503:
                ADMISSIONS.labels("unavailable").inc()
                raise Rejection(
                    503, err.message, "service_unavailable", err.code, headers=[retry_after(1)]
                ) from None
            ADMISSIONS.labels("unauthenticated").inc()
            raise Rejection(401, err.message, "invalid_request_error", err.code) from None

    def authorize(self, principal: Principal | None, model: str) -> None:
        if principal is not None and not principal.allows_model(model):
            ADMISSIONS.labels("forbidden").inc()
            raise Rejection(
                403,
                f"This key may not use the model `{model}`.",
                "invalid_request_error",
                "model_not_allowed",
                param="model",
            )

    def priority(self, principal: Principal | None, header: str | None) -> Priority:
        if header is None and principal is not None:  # the common case: the tier's
            return self._tiers.get(principal.tier, Priority.LOW)
        tier = principal.tier if principal is not None else "pro"
        trusted = principal.trusted if principal is not None else False
        try:
            return prio.resolve(tier, header, trusted, self._tiers)
        except prio.PriorityError as exc:
            raise Rejection(
                400,
                str(exc),
                "invalid_request_error",
                "invalid_priority",
                self.config.priority_header,
            ) from None

    async def reserve(
        self,
        request_id: str,
        principal: Principal | None,
        model: str,
        prompt_tokens: int,
        max_tokens: int | None,
    ) -> Ticket | None:
        if self.limiter is None:
            return None
        cfg = self.config.limits
        estimate = estimate_tokens(prompt_tokens, max_tokens, cfg.default_max_tokens)
        plan = self._planner.plan(principal, model, estimate)
        if plan.empty:
            return None
        if self._memory is not None:
            fast = self._memory.reserve_headers(plan, request_id, cfg.slot_ttl_s)
            if fast is not None:  # everything fits: no verdict object needed
                _ADMITTED.inc()
                return Ticket(request_id, plan, MemoryLimiter.name, estimate, fast)
            verdict = self._memory.reserve_now(plan, request_id, cfg.slot_ttl_s)
        else:
            verdict = await self.limiter.reserve(plan, request_id, cfg.slot_ttl_s)
        headers = rate_limit_headers(verdict)
        if verdict.allowed:
            _ADMITTED.inc()
            return Ticket(request_id, plan, verdict.backend, estimate, headers)
        raise self._refusal(verdict, plan, headers)

    def _refusal(
        self, verdict: Verdict, plan: Plan, headers: list[tuple[bytes, bytes]]
    ) -> Rejection:
        headers = [retry_after(verdict.retry_after), *headers]
        if verdict.unavailable:
            ADMISSIONS.labels("unavailable").inc()
            return Rejection(
                503,
                "Rate limiting is unavailable; retry later.",
                "service_unavailable",
                "limiter_unavailable",
                headers=headers,
            )
        ADMISSIONS.labels("limited").inc()
        name = verdict.refused_by or "limit"
        kind = next((b.kind for b in plan.rates if b.name == name), Kind.CONCURRENCY)
        what = {
            Kind.REQUESTS: "requests per minute",
            Kind.TOKENS: "tokens per minute",
            Kind.CONCURRENCY: "concurrent requests",
        }[kind]
        scope = name.rsplit(":", 1)[0].split(":", 1)[0]
        return Rejection(
            429,
            f"Rate limit reached on {what} ({scope} limit). "
            f"Retry after {max(1, round(verdict.retry_after))} s.",
            kind.value,
            "rate_limit_exceeded",
            headers=headers,
        )

    async def settle(self, ticket: Ticket, actual_tokens: int | None, served: bool) -> None:
        """Exactly once per ticket (later calls do nothing)."""
        if ticket.settled or self.limiter is None:
            return
        ticket.settled = True
        if self._memory is not None:
            self._memory.settle_now(ticket.plan, ticket.request_id, actual_tokens, served)
        elif isinstance(self.limiter, FailoverLimiter):
            await self.limiter.settle_on(
                ticket.backend, ticket.plan, ticket.request_id, actual_tokens, served
            )
        else:
            await self.limiter.settle(ticket.plan, ticket.request_id, actual_tokens, served)
