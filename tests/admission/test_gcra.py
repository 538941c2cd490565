"""GCRA arithmetic: bursts, steady rate, no double burst, oversize requests, refunds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.admission.limits import gcra


def _run(costs: list[int], limit: int, period: float, now: float) -> tuple[list[bool], float]:
    tat = 0.0
    allowed = []
    for c in costs:
        out = gcra.check(tat, now, c, limit, period)
        allowed.append(out.allowed)
        tat = out.tat
    return allowed, tat


def test_a_burst_admits_exactly_the_limit() -> None:
    allowed, _ = _run([1] * 15, limit=10, period=60.0, now=100.0)
    assert allowed == [True] * 10 + [False] * 5


def test_capacity_returns_at_the_steady_rate_and_retry_after_says_when() -> None:
    tat = 0.0
    for _ in range(10):
        tat = gcra.check(tat, 100.0, 1, 10, 60.0).tat
    refused = gcra.check(tat, 100.0, 1, 10, 60.0)
    assert not refused.allowed
    assert abs(refused.retry_after - 6.0) < 1e-6
    assert refused.remaining == 0
    assert abs(refused.reset_after - 60.0) < 1e-6
    assert not gcra.check(tat, 105.9, 1, 10, 60.0).allowed
    later = gcra.check(tat, 106.0, 1, 10, 60.0)
    assert later.allowed and later.remaining == 0


def test_no_double_burst_across_a_window_boundary() -> None:
    # A fixed window would allow 10 at t=59.9 and 10 more at t=60.1.
    tat = 0.0
    admitted = 0
    for t in (59.9, 60.1):
        for _ in range(10):
            out = gcra.check(tat, t, 1, 10, 60.0)
            if out.allowed:
                admitted += 1
                tat = out.tat
    assert admitted == 10


def test_a_request_larger_than_the_limit_passes_only_on_a_full_bucket() -> None:
    out = gcra.check(0.0, 100.0, 500, 100, 60.0)
    assert out.allowed  # overshoot by at most one request
    second = gcra.check(out.tat, 100.0, 1, 100, 60.0)
    assert not second.allowed
    # Another oversize one waits until the bucket is full again.
    again = gcra.check(out.tat, 100.0, 500, 100, 60.0)
    assert not again.allowed
    assert abs(again.retry_after - (out.tat - 100.0)) < 1e-6


def test_refund_gives_back_unused_estimate() -> None:
    out = gcra.check(0.0, 100.0, 100, 100, 60.0)
    assert not gcra.check(out.tat, 100.0, 1, 100, 60.0).allowed
    tat = gcra.refund(out.tat, 40, 100, 60.0)
    assert gcra.check(tat, 100.0, 40, 100, 60.0).allowed
    assert not gcra.check(tat, 100.0, 41, 100, 60.0).allowed


@settings(deadline=None, max_examples=200)
@given(
    costs=st.lists(st.integers(1, 30), min_size=1, max_size=80),
    limit=st.integers(1, 200),
    gaps=st.lists(st.floats(0, 5), min_size=80, max_size=80),
)
def test_any_window_admits_at_most_limit_plus_one_oversize_plus_rate(
    costs: list[int], limit: int, gaps: list[float]
) -> None:
    period = 60.0
    tat, now = 0.0, 1000.0
    admitted: list[tuple[float, int]] = []
    for cost, gap in zip(costs, gaps, strict=False):
        now += gap
        out = gcra.check(tat, now, cost, limit, period)
        if out.allowed:
            admitted.append((now, cost))
            tat = out.tat
    start = admitted[0][0] if admitted else now
    span = (admitted[-1][0] - start) if admitted else 0.0
    total = sum(c for _, c in admitted)
    biggest = max((c for _, c in admitted), default=0)
    assert total <= limit + biggest + limit * span / period + 1e-6
