"""The routing seam: base filtering, round-robin, least-load, the policy registry."""

from __future__ import annotations

import pytest

from sluice.routing import Endpoint, EndpointState, NoEndpointError, RequestFacts, make_policy


def _states(n: int) -> list[EndpointState]:
    return [
        EndpointState(Endpoint(id=f"e{i}", url=f"http://127.0.0.1:{8001 + i}")) for i in range(n)
    ]


def test_round_robin_cycles_over_available_endpoints() -> None:
    states = _states(3)
    policy = make_policy("round_robin")
    facts = RequestFacts(model="m", prompt_tokens=10)
    picked = [policy.pick(facts, states, now=0.0).endpoint.id for _ in range(6)]
    assert picked == ["e0", "e1", "e2", "e0", "e1", "e2"]


def test_ejected_and_unhealthy_endpoints_are_skipped_until_their_deadline() -> None:
    states = _states(3)
    states[0].ejected_until = 10.0
    states[1].healthy = False
    policy = make_policy("least_load")
    facts = RequestFacts(model="m", prompt_tokens=10)
    assert policy.pick(facts, states, now=5.0).endpoint.id == "e2"
    states[2].in_flight = 5
    assert policy.pick(facts, states, now=11.0).endpoint.id == "e0"


def test_least_load_counts_gateway_in_flight_plus_engine_waiting() -> None:
    states = _states(2)
    states[0].begin(prefill_tokens=100)
    states[1].waiting = 2
    policy = make_policy("least_load")
    decision = policy.pick(RequestFacts(model="m", prompt_tokens=1), states, now=0.0)
    assert decision.endpoint.id == "e0"
    states[0].end(prefill_tokens=100, prefill_done=False)
    assert states[0].in_flight == 0 and states[0].in_flight_prefill_tokens == 0
    assert "e0" in decision.explain()


def test_no_available_endpoint_raises() -> None:
    states = _states(1)
    states[0].healthy = False
    with pytest.raises(NoEndpointError):
        make_policy("round_robin").pick(RequestFacts(model="m", prompt_tokens=1), states, 0.0)


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="round_robin"):
        make_policy("nope")
