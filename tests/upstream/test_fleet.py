"""Passive outlier detection: ejection after consecutive failures, doubling backoff, probes."""

from __future__ import annotations

from sluice.config import HealthConfig
from sluice.routing import Endpoint
from sluice.upstream.fleet import Fleet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_fleet(clock: Clock) -> Fleet:
    health = HealthConfig(failures_to_eject=3, ejection_base_s=2.0, ejection_max_s=5.0)
    endpoints = [Endpoint("a", "http://a"), Endpoint("b", "http://b", models=frozenset({"m"}))]
    return Fleet(endpoints, health, clock=clock)


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    clock = Clock()
    fleet = make_fleet(clock)
    a = fleet.by_id["a"]
    fleet.record_failure(a)
    fleet.record_failure(a)
    fleet.record_success(a)
    assert not fleet.record_failure(a) and a.available(clock.now)
    fleet.record_failure(a)
    assert fleet.record_failure(a)
    assert not a.available(clock.now) and a.ejected_until == clock.now + 2.0


def test_backoff_doubles_up_to_the_maximum_and_only_a_probe_readmits() -> None:
    clock = Clock()
    fleet = make_fleet(clock)
    a = fleet.by_id["a"]
    for _ in range(3):
        fleet.record_failure(a)
    assert not fleet.probe_due(a)
    clock.now += 2.0
    assert fleet.probe_due(a) and not a.available(clock.now)  # waits for its probe
    fleet.probe_result(a, ok=False)
    assert a.ejected_until == clock.now + 4.0
    clock.now += 4.0
    fleet.probe_result(a, ok=False)
    assert a.ejected_until == clock.now + 5.0  # capped
    assert fleet.retry_after() == 5
    clock.now += 5.0
    fleet.probe_result(a, ok=True)
    assert a.available(clock.now) and a.consecutive_failures == 0


def test_discovered_models_replace_the_endpoint_unless_the_config_pinned_them() -> None:
    fleet = make_fleet(Clock())
    a, b = fleet.by_id["a"], fleet.by_id["b"]
    assert a.endpoint.serves("m")  # declares nothing yet: serves anything
    fleet.set_served_models(a, ["other"])
    assert not a.endpoint.serves("m") and a.endpoint.serves("other")
    assert fleet.generation == 1 and fleet.served_models() == {"m", "other"}
    fleet.set_served_models(b, ["ignored"])  # pinned by config
    assert b.endpoint.models == frozenset({"m"}) and fleet.generation == 1
