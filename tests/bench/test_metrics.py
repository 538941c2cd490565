import math

import pytest

from sluice.bench.metrics import (
    SLO,
    LogHistogram,
    RequestRecord,
    counter_delta,
    hit_rate,
    percentile,
    summarize,
    throughput_series,
)


def rec(i, start, first, end, out, ok=True, itls=None, prompt=100):
    return RequestRecord(f"r{i}", start, end, first, prompt, out, ok=ok, itls=itls)


def test_percentile_matches_linear_interpolation():
    vals = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(vals, 50) == 3.0
    assert percentile(vals, 0) == 1.0 and percentile(vals, 100) == 5.0
    assert percentile(vals, 90) == pytest.approx(4.6)
    assert percentile([1.0, 2.0], 25) == pytest.approx(1.25)
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(vals, 101)


def test_request_level_metrics():
    r = rec(0, 1.0, 1.5, 3.5, 5)
    assert r.ttft == 0.5 and r.e2e == 2.5 and r.tpot == pytest.approx(0.5)
    assert rec(1, 0, 0.2, 0.2, 1).tpot is None
    assert rec(2, 0, None, 1, 0, ok=False).ttft is None


def test_slo_goodput():
    slo = SLO(ttft=2.0, itl=0.1)
    assert slo.met(rec(0, 0, 1.0, 1.9, 10))  # tpot 0.1
    assert not slo.met(rec(1, 0, 2.5, 2.6, 2))  # ttft too high
    assert not slo.met(rec(2, 0, 0.1, 5.0, 10))  # tpot too high
    assert not slo.met(rec(3, 0, 0.1, 0.2, 2, ok=False))
    assert slo.met(rec(4, 0, 0.3, 0.3, 1))  # one token: ttft only


def test_summarize():
    records = [
        rec(0, 0.0, 0.5, 2.0, 11, itls=[0.15] * 10),
        rec(1, 1.0, 1.1, 2.0, 10, itls=[0.1] * 9),
        rec(2, 2.0, 5.0, 10.0, 11, itls=[0.5] * 10),
        rec(3, 3.0, None, 3.5, 0, ok=False),
    ]
    s = summarize(records, prefix_hit_rate=0.25)
    assert s.requests == 4 and s.ok == 3 and s.failed == 1
    assert s.duration == 10.0
    assert s.ttft_p50 == pytest.approx(0.5)
    assert s.output_throughput == pytest.approx(3.2)
    assert s.total_token_throughput == pytest.approx((32 + 300) / 10)
    assert s.request_throughput == pytest.approx(0.3)
    assert s.goodput == pytest.approx(0.1)  # only r1 meets both SLO parts
    assert s.slo_attainment == pytest.approx(0.25)
    assert s.itl_p50 == pytest.approx(0.15, rel=0.01)
    assert s.prefix_hit_rate == 0.25
    assert summarize([]).requests == 0


def test_log_histogram_percentiles_close_to_exact():
    vals = [0.001 * (1.03**i) for i in range(400)]
    h = LogHistogram(precision=0.01)
    h.extend(vals)
    for q in (1, 50, 90, 99):
        assert h.percentile(q) == pytest.approx(percentile(vals, q), rel=0.04)
    w = LogHistogram()
    w.add(0.01, count=99)
    w.add(1.0, count=1)
    assert w.percentile(50) == pytest.approx(0.01, rel=0.01)
    assert w.percentile(100) == pytest.approx(1.0, rel=0.01)
    assert math.isnan(LogHistogram().percentile(50))


def test_counters_and_hit_rate():
    before = {"a:q": 100.0, "a:h": 40.0, "b:q": 50.0}
    after = {"a:q": 300.0, "a:h": 140.0, "b:q": 10.0}
    d = counter_delta(before, after)
    assert d == {"a:q": 200.0, "a:h": 100.0, "b:q": 10.0}  # b reset
    assert hit_rate(200, 100) == 0.5 and hit_rate(0, 0) is None


def test_throughput_series_conserves_tokens():
    records = [rec(0, 0.0, 1.0, 3.0, 20), rec(1, 0.5, 2.5, 4.5, 40)]
    times, rates = throughput_series(records, bucket=0.5)
    assert times[0] == 0.0 and len(times) == 9
    assert sum(r * 0.5 for r in rates) == pytest.approx(60.0)
    assert rates[0] == 0.0 and rates[2] == pytest.approx(10.0)
    assert rates[5] == pytest.approx(30.0)  # both requests streaming
