from collections import Counter

import pytest

from sluice.bench.cluster import simulate
from sluice.bench.cluster.facts import token_block_facts
from sluice.bench.workloads import (
    MultiTurnConfig,
    RandomConfig,
    SharedPrefixConfig,
    multi_turn,
    random_control,
    shared_prefix,
)
from sluice.routing import Decision, Policy, make_policy
from sluice.sim.engine import EngineConfig

SMALL = RandomConfig(num_requests=40, input_len=300, output_len=12, rate=20, seed=1)


class Pinned(Policy):
    """Everything to one engine; counts the callbacks the simulator makes."""

    name = "pinned"

    def __init__(self) -> None:
        self.dispatched = 0
        self.completed: list[float | None] = []

    def choose(self, facts, candidates, now):
        return Decision(candidates[0], "pinned")

    def on_dispatch(self, facts, endpoint, now):
        self.dispatched += 1

    def on_complete(self, facts, endpoint, now, ttft, ok, output_tokens=0):
        self.completed.append(ttft)


def test_every_request_completes_with_its_exact_output_length():
    wl = random_control(SMALL)
    result = simulate(wl, engines=3, policy="round_robin")
    assert len(result.records) == 40 and all(r.ok for r in result.records)
    by_id = {r.request_id: r for r in result.records}
    for req in wl:
        rec = by_id[req.request_id]
        assert rec.output_tokens == req.max_tokens
        assert rec.prompt_tokens == req.prompt_tokens
        assert rec.start == pytest.approx(req.arrival)
        assert rec.start < rec.first_token <= rec.end
    # round robin spreads 40 requests over 3 engines as 14/13/13
    assert sorted(Counter(r.endpoint for r in result.records).values()) == [13, 13, 14]
    assert sum(e.requests for e in result.engines) == 40


def test_policy_object_sees_dispatch_and_completion_and_state_balances():
    policy = Pinned()
    result = simulate(random_control(SMALL), engines=2, policy=policy)
    assert policy.dispatched == 40 and len(policy.completed) == 40
    assert all(t is not None and t > 0 for t in policy.completed)
    assert {r.endpoint for r in result.records} == {"engine-0"}
    assert [e.requests for e in result.engines] == [40, 0]


def test_pinning_everything_on_one_engine_is_slower_than_spreading():
    wl = random_control(RandomConfig(num_requests=60, input_len=2000, output_len=50, rate=50))
    one = simulate(wl, engines=4, policy=Pinned()).summary()
    spread = simulate(wl, engines=4, policy="least_load").summary()
    assert spread.ttft_p50 < one.ttft_p50


def test_next_turn_waits_for_previous_turn_and_think_time():
    cfg = MultiTurnConfig(
        users=3,
        rounds=3,
        system_prompt_len=50,
        first_prompt_len=20,
        question_len=(5, 10),
        answer_len=(5, 10),
        think_time=1.5,
    )
    result = simulate(multi_turn(cfg), engines=2, policy="least_load")
    recs = {r.request_id: r for r in result.records}
    assert len(recs) == 9
    for u in range(3):
        for r in range(1, 3):
            prev, cur = recs[f"mt-u{u}-r{r - 1}"], recs[f"mt-u{u}-r{r}"]
            assert cur.start == pytest.approx(prev.end + 1.5)


def test_prefix_cache_hits_follow_the_workload():
    shared = shared_prefix(
        SharedPrefixConfig(
            num_groups=2,
            prompts_per_group=10,
            system_prompt_len=512,
            question_len=32,
            output_len=4,
            rate=5,
        )
    )
    hot = simulate(shared, engines=2, policy=Pinned())
    assert hot.prefix_hit_rate > 0.7  # 18 of 20 requests find their 512-token group prefix
    cached = [r.cached_tokens for r in hot.records]
    assert max(cached) >= 496
    cold = simulate(random_control(SMALL), engines=2, policy="round_robin")
    assert cold.prefix_hit_rate == 0.0


def test_deterministic():
    a = simulate(random_control(SMALL), engines=3, policy="least_load")
    b = simulate(random_control(SMALL), engines=3, policy="least_load")
    assert [(r.request_id, r.endpoint, r.first_token, r.end) for r in a.records] == [
        (r.request_id, r.endpoint, r.first_token, r.end) for r in b.records
    ]


def test_summary_and_itl_are_simulated_step_times():
    result = simulate(random_control(SMALL), engines=2, policy="round_robin")
    s = result.summary()
    assert s.ok == 40 and s.failed == 0
    assert 0.001 < s.itl_p50 < 0.05  # a decode step of an 8B model on an H100
    assert result.itl.total == sum(r.output_tokens - 1 for r in result.records)
    assert s.extra["engines"] == 2


def test_refused_request_is_a_failed_record_not_a_crash():
    cfg = EngineConfig(max_model_len=256)
    wl = random_control(RandomConfig(num_requests=4, input_len=400, output_len=4, rate=10))
    result = simulate(wl, engines=1, policy="round_robin", engine_config=cfg)
    assert [r.ok for r in result.records] == [False] * 4
    assert "maximum context length" in result.records[0].error


def test_prefix_aware_policy_runs_with_block_hash_facts():
    shared = shared_prefix(
        SharedPrefixConfig(
            num_groups=4,
            prompts_per_group=8,
            system_prompt_len=1024,
            question_len=32,
            output_len=8,
            rate=20,
        )
    )
    facts = token_block_facts("sim-model", 16)
    smart = simulate(
        shared,
        engines=4,
        policy=make_policy("prefix_affinity"),
        facts_builder=facts,
        model="sim-model",
    )
    rr = simulate(shared, engines=4, policy="round_robin")
    assert len(smart.records) == 32
    assert smart.prefix_hit_rate >= rr.prefix_hit_rate
