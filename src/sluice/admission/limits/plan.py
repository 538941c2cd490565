"""Which buckets one request reserves: per key, user, tenant, model and global. PURE.

The bucket names and limits depend only on (credential, model); they are computed once and kept
in a bounded cache, so the hot path only stamps the request's token estimate onto them.
"""

from __future__ import annotations

from sluice.admission.config import LimitsConfig, LimitSet
from sluice.admission.limits.buckets import Kind, Plan, RateBucket, SlotBucket
from sluice.admission.principal import Principal

_Limits = tuple[int | None, int | None, int | None]  # rpm, tpm, concurrency
_Template = tuple[tuple[tuple[str, Kind, int], ...], tuple[SlotBucket, ...], Plan | None]


def estimate_tokens(prompt_tokens: int, max_tokens: int | None, default_max_tokens: int) -> int:
    """What a request may consume: its prompt plus the completion it allows."""
    completion = default_max_tokens if max_tokens is None else max(0, max_tokens)
    return max(1, prompt_tokens + completion)


def _limits(s: LimitSet) -> _Limits:
    return (s.rpm, s.tpm, s.concurrency)


class Planner:
    def __init__(self, config: LimitsConfig, cache_size: int = 10_000) -> None:
        self.config = config
        self._cache: dict[tuple[Principal | None, str], _Template] = {}
        self._cache_size = cache_size

    def plan(self, principal: Principal | None, model: str, estimate: int) -> Plan:
        template = self._cache.get((principal, model))
        if template is None:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            template = self._cache[(principal, model)] = self._template(principal, model)
        rates, slots, fixed = template
        if fixed is not None:  # no token buckets: the plan does not depend on the estimate
            return fixed
        period = self.config.period_s
        return Plan(
            tuple(
                RateBucket(name, kind, limit, period, 1 if kind is Kind.REQUESTS else estimate)
                for name, kind, limit in rates
            ),
            slots,
        )

    def _template(self, principal: Principal | None, model: str) -> _Template:
        cfg = self.config
        scopes: list[tuple[str, _Limits]] = []
        if principal is not None:
            key = cfg.key
            scopes.append(
                (
                    f"key:{principal.key_id}",
                    (
                        principal.rpm if principal.rpm is not None else key.rpm,
                        principal.tpm if principal.tpm is not None else key.tpm,
                        (
                            principal.concurrency
                            if principal.concurrency is not None
                            else key.concurrency
                        ),
                    ),
                )
            )
            scopes.append((f"user:{principal.tenant}/{principal.user}", _limits(cfg.user)))
            scopes.append((f"tenant:{principal.tenant}", _limits(cfg.tenant)))
        scopes.append((f"model:{model}", _limits(cfg.models.get(model, cfg.model))))
        scopes.append(("global", _limits(cfg.global_)))
        rates: list[tuple[str, Kind, int]] = []
        slots: list[SlotBucket] = []
        for scope, (rpm, tpm, concurrency) in scopes:
            if rpm is not None:
                rates.append((f"{scope}:requests", Kind.REQUESTS, rpm))
            if tpm is not None:
                rates.append((f"{scope}:tokens", Kind.TOKENS, tpm))
            if concurrency is not None:
                slots.append(SlotBucket(f"{scope}:concurrency", concurrency))
        fixed = None
        if not any(kind is Kind.TOKENS for _, kind, _ in rates):
            period = cfg.period_s
            fixed = Plan(
                tuple(RateBucket(name, kind, limit, period, 1) for name, kind, limit in rates),
                tuple(slots),
            )
        return tuple(rates), tuple(slots), fixed


def build_plan(
    config: LimitsConfig, principal: Principal | None, model: str, estimate: int
) -> Plan:
    """One-off plan (tests, tools); the gateway keeps a ``Planner``."""
    return Planner(config).plan(principal, model, estimate)
