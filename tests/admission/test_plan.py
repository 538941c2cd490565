"""Which buckets a request reserves: scopes, per-key overrides, per-model limits, estimates."""

from __future__ import annotations

from sluice.admission.config import LimitsConfig, LimitSet
from sluice.admission.headers import duration
from sluice.admission.limits.buckets import Kind
from sluice.admission.limits.plan import Planner, estimate_tokens
from sluice.admission.principal import Principal


def test_defaults_limit_requests_per_key_user_and_globally() -> None:
    p = Principal(tenant="acme", user="al", tier="pro", key_id="k1")
    plan = Planner(LimitsConfig()).plan(p, "m", estimate=500)
    assert [(b.name, b.limit, b.cost) for b in plan.rates] == [
        ("key:k1:requests", 1000, 1),
        ("user:acme/al:requests", 100, 1),
        ("global:requests", 10_000, 1),
    ]
    assert plan.slots == ()


def test_key_overrides_model_limits_and_token_estimates() -> None:
    cfg = LimitsConfig(
        key=LimitSet(rpm=10, tpm=1000),
        tenant=LimitSet(concurrency=4),
        model=LimitSet(tpm=50_000),
        models={"big": LimitSet(tpm=5_000, concurrency=2)},
    )
    p = Principal(tenant="acme", user="al", tier="pro", key_id="k1", rpm=99, concurrency=1)
    planner = Planner(cfg)
    big = planner.plan(p, "big", estimate=300)
    names = {b.name: (b.kind, b.limit, b.cost) for b in big.rates}
    assert names["key:k1:requests"] == (Kind.REQUESTS, 99, 1)  # the key's own value wins
    assert names["key:k1:tokens"] == (Kind.TOKENS, 1000, 300)  # the config's, not overridden
    assert names["model:big:tokens"] == (Kind.TOKENS, 5_000, 300)
    assert {s.name: s.limit for s in big.slots} == {
        "key:k1:concurrency": 1,
        "tenant:acme:concurrency": 4,
        "model:big:concurrency": 2,
    }
    small = planner.plan(p, "small", estimate=7)
    assert {b.name: b.limit for b in small.rates}["model:small:tokens"] == 50_000
    assert all(b.cost == 7 for b in small.rates if b.kind is Kind.TOKENS)


def test_estimates_and_reset_durations() -> None:
    assert estimate_tokens(100, 50, 1024) == 150
    assert estimate_tokens(100, None, 1024) == 1124
    assert estimate_tokens(0, 0, 1024) == 1
    assert [duration(s) for s in (0.0204, 1, 59.2, 360, 3723)] == [
        "21ms",
        "1s",
        "1m0s",
        "6m0s",
        "1h2m3s",
    ]
