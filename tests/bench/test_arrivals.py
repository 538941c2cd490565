import itertools
import statistics

import pytest

from sluice.bench.arrivals import (
    constant_arrivals,
    gamma_arrivals,
    make_arrivals,
    poisson_arrivals,
    trace_arrivals,
)


def gaps(times):
    return [b - a for a, b in itertools.pairwise(times)]


def test_poisson_mean_rate_and_cv():
    t = poisson_arrivals(10.0, 20000, seed=1)
    g = gaps(t)
    assert t[0] == 0.0 and t == sorted(t)
    assert statistics.mean(g) == pytest.approx(0.1, rel=0.03)
    # exponential gaps: coefficient of variation 1
    assert statistics.stdev(g) / statistics.mean(g) == pytest.approx(1.0, rel=0.05)


def test_gamma_burstiness_changes_variance_not_rate():
    bursty = gaps(gamma_arrivals(10.0, 20000, burstiness=0.25, seed=2))
    regular = gaps(gamma_arrivals(10.0, 20000, burstiness=4.0, seed=2))
    for g in (bursty, regular):
        assert statistics.mean(g) == pytest.approx(0.1, rel=0.05)
    # CV of gamma gaps = 1/sqrt(shape)
    assert statistics.stdev(bursty) / statistics.mean(bursty) == pytest.approx(2.0, rel=0.07)
    assert statistics.stdev(regular) / statistics.mean(regular) == pytest.approx(0.5, rel=0.07)


def test_seeded_and_reproducible():
    assert poisson_arrivals(3, 50, seed=7) == poisson_arrivals(3, 50, seed=7)
    assert poisson_arrivals(3, 50, seed=7) != poisson_arrivals(3, 50, seed=8)


def test_infinite_rate_and_constant():
    assert gamma_arrivals(float("inf"), 3) == [0.0, 0.0, 0.0]
    assert constant_arrivals(4, 3) == [0.0, 0.25, 0.5]
    assert make_arrivals("constant", 2, 2) == [0.0, 0.5]


def test_trace_timing_with_speedup():
    assert trace_arrivals([1000, 1500, 4000], speedup=2.0) == [0.0, 0.25, 1.5]
    assert trace_arrivals([]) == []
    with pytest.raises(ValueError):
        trace_arrivals([1], speedup=0)


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_arrivals("weibull", 1, 1)
    with pytest.raises(ValueError):
        gamma_arrivals(-1, 3)
