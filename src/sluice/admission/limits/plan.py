"""Which buckets one request reserves: per key, user, tenant, model and global. PURE."""

from __future__ import annotations

from sluice.admission.config import LimitsConfig, LimitSet
from sluice.admission.limits.buckets import Kind, Plan, RateBucket, SlotBucket
from sluice.admission.principal import Principal


def estimate_tokens(prompt_tokens: int, max_tokens: int | None, default_max_tokens: int) -> int:
    """What a request may consume: its prompt plus the completion it allows."""
    completion = default_max_tokens if max_tokens is None else max(0, max_tokens)
    return max(1, prompt_tokens + completion)


def _add(
    scope: str,
    limits: LimitSet,
    period: float,
    estimate: int,
    rates: list[RateBucket],
    slots: list[SlotBucket],
) -> None:
    if limits.rpm is not None:
        rates.append(RateBucket(f"{scope}:requests", Kind.REQUESTS, limits.rpm, period, 1))
    if limits.tpm is not None:
        rates.append(RateBucket(f"{scope}:tokens", Kind.TOKENS, limits.tpm, period, estimate))
    if limits.concurrency is not None:
        slots.append(SlotBucket(f"{scope}:concurrency", limits.concurrency))


def build_plan(
    config: LimitsConfig, principal: Principal | None, model: str, estimate: int
) -> Plan:
    rates: list[RateBucket] = []
    slots: list[SlotBucket] = []
    period = config.period_s
    if principal is not None:
        key = LimitSet(
            rpm=principal.rpm if principal.rpm is not None else config.key.rpm,
            tpm=principal.tpm if principal.tpm is not None else config.key.tpm,
            concurrency=(
                principal.concurrency
                if principal.concurrency is not None
                else config.key.concurrency
            ),
        )
        _add(f"key:{principal.key_id}", key, period, estimate, rates, slots)
        user = f"user:{principal.tenant}/{principal.user}"
        _add(user, config.user, period, estimate, rates, slots)
        _add(f"tenant:{principal.tenant}", config.tenant, period, estimate, rates, slots)
    model_limits = config.models.get(model, config.model)
    _add(f"model:{model}", model_limits, period, estimate, rates, slots)
    _add("global", config.global_, period, estimate, rates, slots)
    return Plan(tuple(rates), tuple(slots))
