"""The ``admission`` configuration section: auth, limits, priority queue."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sluice.admission.jwt_auth import JwtConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LimitSet(_Section):
    """Requests per period, tokens per period, concurrent requests (None: no limit)."""

    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    concurrency: int | None = Field(None, gt=0)


class LimitsConfig(_Section):
    enabled: bool = True
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sluice:rl"
    redis_timeout_s: float = Field(0.25, gt=0)
    # When Redis cannot be reached: "open" enforces in-process limits, "closed" refuses (503).
    on_redis_error: Literal["open", "closed"] = "open"
    redis_retry_s: float = Field(1.0, gt=0)
    period_s: float = Field(60.0, gt=0)
    # Concurrency slots that are never released (a crashed replica) expire after this long.
    slot_ttl_s: float = Field(600.0, gt=0)
    # Completion tokens reserved when a request gives no max_tokens.
    default_max_tokens: int = Field(1024, ge=0)
    key: LimitSet = Field(default_factory=lambda: LimitSet(rpm=1000))
    user: LimitSet = Field(default_factory=lambda: LimitSet(rpm=100))
    tenant: LimitSet = Field(default_factory=LimitSet)
    model: LimitSet = Field(default_factory=LimitSet)  # every model, unless listed in `models`
    models: dict[str, LimitSet] = Field(default_factory=dict)
    global_: LimitSet = Field(default_factory=lambda: LimitSet(rpm=10_000), alias="global")


class QueueConfig(_Section):
    enabled: bool = True
    max_total: int = Field(1024, ge=1)
    max_per_priority: dict[Literal["critical", "high", "normal", "low", "batch"], int] = Field(
        default_factory=dict
    )
    aging_s: float = Field(10.0, gt=0)
    max_wait_s: float = Field(30.0, gt=0)
    # An endpoint is saturated when the engine reports this many waiting requests, or this KV
    # cache usage, or (if set) the gateway has this many requests in flight on it.
    engine_waiting: int = Field(32, ge=1)
    kv_usage: float = Field(0.95, gt=0, le=1.0)
    max_in_flight: int | None = Field(None, ge=1)
    tick_s: float = Field(0.02, gt=0)


class AuthConfig(_Section):
    enabled: bool = True
    key_cache_ttl_s: float = Field(5.0, ge=0)
    key_cache_size: int = Field(10_000, ge=1)
    # The admin credential for /admin/*; also read from SLUICE_ADMIN_TOKEN.
    admin_token: str | None = None
    jwt: JwtConfig = Field(default_factory=JwtConfig)


class AdmissionConfig(_Section):
    """Master switch ``enabled``; each part has its own switch too."""

    enabled: bool = True
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    tier_priority: dict[str, Literal["critical", "high", "normal", "low", "batch"]] = Field(
        default_factory=lambda: {"enterprise": "high", "pro": "normal", "free": "low"}
    )
    priority_header: str = "x-sluice-priority"
