"""Cache-aware policies: affinity, load guards, degenerate cases, cost-model learning."""

from __future__ import annotations

import pytest

from sluice.routing import Endpoint, EndpointState, RequestFacts, make_policy
from sluice.routing.cost_model import CostModel
from sluice.routing.hashing import hash_token_blocks
from sluice.routing.prefix_index import PrefixIndex

CACHE_POLICIES = ["prefix_affinity", "weighted", "cost_model", "affinity_cost"]


def _states(n: int) -> list[EndpointState]:
    return [EndpointState(Endpoint(id=f"e{i}", url=f"http://x:{i}")) for i in range(n)]


def _facts(tokens: list[int], request_id: str = "") -> RequestFacts:
    return RequestFacts(
        model="m",
        prompt_tokens=len(tokens),
        block_hashes=hash_token_blocks(tokens, 16),
        request_id=request_id,
    )


def _route(policy, facts, states, now=0.0):
    decision = policy.pick(facts, states, now)
    policy.on_dispatch(facts, decision.endpoint, now)
    return decision


@pytest.mark.parametrize("name", CACHE_POLICIES)
def test_repeated_prompt_returns_to_the_endpoint_that_cached_it(name: str) -> None:
    states = _states(4)
    policy = make_policy(name)
    prompt = list(range(2048))
    first = _route(policy, _facts(prompt), states)
    # other traffic elsewhere; the first endpoint is as loaded as the rest
    for i, s in enumerate(states):
        s.in_flight = 1
        if s is not first.endpoint:
            _route(policy, _facts(list(range(10_000 * (i + 1), 10_000 * (i + 1) + 512))), [s])
    again = policy.pick(_facts(prompt + list(range(5000, 5100))), states, 1.0)
    assert again.endpoint.id == first.endpoint.id
    assert again.cached_tokens == 2048
    assert again.prefill_tokens == 100
    assert first.endpoint.id in again.explain()


@pytest.mark.parametrize("name", CACHE_POLICIES)
def test_cache_miss_goes_to_least_loaded_not_emptiest_index(name: str) -> None:
    states = _states(3)
    policy = make_policy(name)
    # e0 has the emptiest index but is the busiest
    for s, load in zip(states, [9, 2, 5], strict=True):
        s.in_flight = load
        s.in_flight_prefill_tokens = 1000 * load
    _route(policy, _facts(list(range(50_000, 50_512))), [states[1]])
    _route(policy, _facts(list(range(60_000, 60_512))), [states[2]])
    decision = policy.pick(_facts(list(range(1024))), states, 0.0)
    assert decision.endpoint.id == "e1"


@pytest.mark.parametrize("name", CACHE_POLICIES)
def test_hot_prefix_is_not_piled_onto_a_saturated_endpoint(name: str) -> None:
    states = _states(3)
    policy = make_policy(name)
    hot = list(range(4096))
    home = _route(policy, _facts(hot), states).endpoint
    home.kv_usage = 0.99
    home.waiting = 40
    home.in_flight = 120
    home.in_flight_prefill_tokens = 400_000
    decision = policy.pick(_facts([*hot, 1, 2, 3]), states, 0.0)
    assert decision.endpoint is not home


def test_prefix_affinity_follows_sglang_thresholds() -> None:
    states = _states(2)
    policy = make_policy("prefix_affinity", balance_abs=4, balance_rel=1.5, cache_threshold=0.5)
    prompt = list(range(320))  # 20 blocks
    _route(policy, _facts(prompt), [states[0]])
    # below the match threshold: least load
    states[0].in_flight = 1
    short = policy.pick(_facts(prompt[:144] + list(range(9000, 9176))), states, 0.0)
    assert short.endpoint.id == "e1" and "miss" in short.reason
    # above it: affinity, although e0 is busier
    assert policy.pick(_facts(prompt), states, 0.0).endpoint.id == "e0"
    # imbalanced (abs > 4 and rel > 1.5): least load wins over the match
    states[0].in_flight = 10
    states[1].in_flight = 2
    decision = policy.pick(_facts(prompt), states, 0.0)
    assert decision.endpoint.id == "e1" and "imbalanced" in decision.reason


def test_weighted_rejects_unknown_scorers_and_reports_scores() -> None:
    with pytest.raises(ValueError, match="known"):
        make_policy("weighted", weights={"nope": 1})
    states = _states(2)
    decision = make_policy("weighted", weights={"load": 1}).pick(_facts([1] * 32), states, 0)
    assert set(decision.scores) == {"e0", "e1"}


def test_precise_mode_does_not_learn_from_decisions() -> None:
    index = PrefixIndex()
    policy = make_policy("cost_model", index=index, learn=False)
    _route(policy, _facts(list(range(64))), _states(2))
    assert index.stats().blocks == 0


def test_cost_model_learns_each_endpoints_prefill_rate_from_ttft() -> None:
    states = _states(2)
    policy = CostModel(prefill_rate=10_000, overhead=0.0, decode_weight=0.0, learning_rate=0.5)
    prompt = list(range(1000))
    for i in range(20):
        for s in states:
            facts = _facts([t + 7919 * i for t in prompt], request_id=f"{s.id}-{i}")
            policy.pick(facts, [s], 0.0)
            policy.on_dispatch(facts, s, 0.0)
            # e1 is four times slower than e0 (1000 uncached tokens each time)
            ttft = 0.05 if s.id == "e0" else 0.2
            policy.on_complete(facts, s, 1.0, ttft, ok=True)
    assert policy.seconds_per_token("e0") == pytest.approx(0.05 / 1000, rel=0.01)
    assert policy.seconds_per_token("e1") == pytest.approx(0.2 / 1000, rel=0.01)
    # with equal queues the fast endpoint wins even with a bit more queued work
    states[0].in_flight_prefill_tokens = 1500
    assert policy.pick(_facts(list(range(77, 1077))), states, 0).endpoint.id == "e0"
    states[0].in_flight_prefill_tokens = 5000
    assert policy.pick(_facts(list(range(77, 1077))), states, 0).endpoint.id == "e1"


def test_cost_model_ignores_failed_requests_and_bounds_pending_state() -> None:
    policy = CostModel()
    state = _states(1)[0]
    facts = _facts(list(range(100)), request_id="r")
    policy.pick(facts, [state], 0.0)
    policy.on_dispatch(facts, state, 0.0)
    policy.on_complete(facts, state, 1.0, ttft=None, ok=False)
    assert policy.samples == 0
    policy.on_complete(facts, state, 1.0, ttft=0.1, ok=True)  # already settled
    assert policy.samples == 0


def test_capacity_follows_engine_block_count() -> None:
    index = PrefixIndex(tokens_per_block=16)
    states = _states(1)
    states[0].num_blocks = 100
    states[0].block_size = 32
    policy = make_policy("prefix_affinity", index=index)
    policy.pick(_facts(list(range(16))), states, 0.0)
    assert index.capacity("e0") == 200


def test_cost_model_sees_a_long_prefill_that_request_counts_miss() -> None:
    states = _states(2)
    # e0: one request, but a 100k-token prefill in progress; e1: three short ones.
    states[0].in_flight, states[0].in_flight_prefill_tokens = 1, 100_000
    states[1].in_flight, states[1].in_flight_prefill_tokens = 3, 3_000
    facts = _facts(list(range(512)))
    assert make_policy("least_load").pick(facts, states, 0).endpoint.id == "e0"
    for name in ("cost_model", "affinity_cost"):
        assert make_policy(name).pick(facts, states, 0).endpoint.id == "e1"


def test_affinity_cost_sticks_to_a_conversation_unless_saturated() -> None:
    states = _states(2)
    policy = make_policy("affinity_cost")
    prompt = list(range(4096))
    home = _route(policy, _facts(prompt), [states[1]]).endpoint
    # The home has more queued prefill than the cache saves: the pure cost model would leave.
    home.in_flight, home.in_flight_prefill_tokens = 4, 8_000
    follow_up = _facts([*prompt, *range(9000, 9200)])
    assert (
        make_policy("cost_model", index=policy.index).pick(follow_up, states, 0).endpoint.id == "e0"
    )
    decision = policy.pick(follow_up, states, 0)
    assert decision.endpoint is home and "prefix match" in decision.reason
    home.kv_usage = 0.97  # below the default kv_saturation (0.99): memory is no reason to leave
    assert policy.pick(follow_up, states, 0).endpoint is home
    home.kv_usage = 0.995
    assert policy.pick(follow_up, states, 0).endpoint.id == "e0"  # capacity unknown
    # Capacity known: 0.5% of 10,000 blocks of 16 tokens holds the 200 uncached tokens; a full
    # engine still serves a hit that needs only the blocks it does not share.
    home.num_blocks, home.block_size = 10_000, 16
    assert policy.pick(follow_up, states, 0).endpoint is home
    home.kv_usage = 0.9995  # 5 free blocks, 80 tokens: no room, and e0 has room
    assert policy.pick(follow_up, states, 0).endpoint.id == "e0"
    states[0].kv_usage = 0.99  # e0 is as full: stay home rather than recompute there
    assert policy.pick(follow_up, states, 0).endpoint is home
    states[0].kv_usage = 0.0
    home.kv_usage = 0.5
    home.waiting = 32  # a queue this long: leave, whatever the memory
    assert policy.pick(follow_up, states, 0).endpoint.id == "e0"
    home.waiting = 31
    assert policy.pick(follow_up, states, 0).endpoint is home


def test_cost_model_penalties_for_memory_and_load() -> None:
    states = _states(2)
    states[0].kv_usage = 0.99
    states[1].in_flight_prefill_tokens = 2_000
    facts = _facts(list(range(256)))
    assert make_policy("cost_model").pick(facts, states, 0).endpoint.id == "e0"
    assert make_policy("cost_model", kv_penalty=2.0).pick(facts, states, 0).endpoint.id == "e1"
    states[0].kv_usage = 0.0
    states[0].in_flight = 40
    assert make_policy("cost_model", load_penalty=0.05).pick(facts, states, 0).endpoint.id == "e1"


def test_load_penalty_ramps_with_memory_so_free_engines_place_misses_by_prefill_queue() -> None:
    """A miss: e0 is busy prefilling a long prompt, e1 has one request more in flight. With free
    memory the request count says nothing of the wait, so the miss goes where the prefill queue
    is short; once e1's memory fills up, requests there wait for memory and the count wins."""
    states = _states(2)
    states[0].in_flight, states[0].in_flight_prefill_tokens = 1, 6_000
    states[1].in_flight, states[1].in_flight_prefill_tokens = 2, 500
    facts = _facts(list(range(6_000)))
    policy = make_policy("affinity_cost")
    assert isinstance(policy, CostModel)
    for kv in (0.0, 0.4, 0.6):
        states[0].kv_usage = states[1].kv_usage = kv
        assert policy.penalty_per_request(states[1]) == pytest.approx(0.1)
        assert policy.pick(facts, states, 0).endpoint.id == "e1"
    states[0].kv_usage = states[1].kv_usage = 0.8  # halfway up the ramp: 0.3 s per request
    assert policy.penalty_per_request(states[1]) == pytest.approx(0.3)
    assert policy.pick(facts, states, 0).endpoint.id == "e0"
    states[0].kv_usage = states[1].kv_usage = 1.0
    assert policy.penalty_per_request(states[1]) == pytest.approx(0.5)
    flat = make_policy("affinity_cost", load_penalty_low=None)
    states[0].kv_usage = states[1].kv_usage = 0.0
    assert flat.pick(facts, states, 0).endpoint.id == "e0"  # the count wins at any usage
    with pytest.raises(ValueError):
        make_policy("cost_model", load_knee=1.0)


def test_capacity_follows_a_change_of_the_index_unit() -> None:
    index = PrefixIndex(tokens_per_block=16)
    states = _states(1)
    states[0].num_blocks, states[0].block_size = 100, 16
    policy = make_policy("affinity_cost", index=index)
    policy.pick(_facts(list(range(16))), states, 0.0)
    assert index.capacity("e0") == 100
    index.tokens_per_block = 8  # learned: each index block stands for fewer tokens
    policy.pick(_facts(list(range(16))), states, 0.0)
    assert index.capacity("e0") == 200


def test_sglang_model_counts_only_its_own_requests_and_has_no_saturation_guard() -> None:
    """The benchmark's stand-in for SGLang's router: load is the router's own in-flight count
    (an engine's queue it does not see), and a hit goes home even on a memory-full engine."""
    options = {"own_load": True, "kv_saturation": 2.0, "max_waiting": 0}
    states = _states(2)
    policy = make_policy("prefix_affinity", **options)
    prompt = list(range(1024))
    home = _route(policy, _facts(prompt), [states[0]]).endpoint
    home.kv_usage, home.waiting = 1.0, 50
    assert policy.pick(_facts(prompt), states, 1.0).endpoint is home
    # The default guard sends the same hit away from the saturated engine.
    guarded = make_policy("prefix_affinity", index=policy.index)
    assert guarded.pick(_facts(prompt), states, 1.0).endpoint is states[1]
    # A miss: e1 has more of the engine's queue but fewer of the router's own requests.
    states[0].in_flight, states[0].waiting = 1, 0
    states[1].in_flight, states[1].waiting = 0, 40
    miss = _facts(list(range(90_000, 90_512)))
    assert policy.pick(miss, states, 1.0).endpoint is states[1]
    assert guarded.pick(miss, states, 1.0).endpoint is states[0]


@pytest.mark.parametrize("bounded", [True, False])
def test_index_bound_follows_the_engine_only_when_bounded(bounded: bool) -> None:
    index = PrefixIndex(default_capacity=1_000_000)
    policy = make_policy("prefix_affinity", index=index, bounded=bounded)
    states = _states(1)
    states[0].num_blocks, states[0].block_size = 100, 16
    _route(policy, _facts(list(range(16 * 300))), states)
    assert index.capacity("e0") == (100 if bounded else 1_000_000)
    assert index.size("e0") == (100 if bounded else 300)


def test_free_queue_index_forgets_idle_conversations_when_the_engine_fills_up() -> None:
    """With ``free_queue`` the index treats an ended conversation as evictable, and once the
    engine's KV is full of running requests its next turn is placed as the miss it will be."""
    states = _states(2)
    for s in states:
        s.num_blocks, s.block_size = 1000, 16
    policy = make_policy("affinity_cost", free_queue=True)
    turn1 = list(range(3200))  # 200 blocks
    facts = _facts(turn1, "t1")
    first = _route(policy, facts, states)
    home = first.endpoint
    assert policy.index.pinned(home.id) == 200
    home.kv_usage = 1.0  # running requests hold every block ...
    policy.on_scrape(home)
    assert policy.pick(_facts(turn1 + [7] * 32), states, 1.0).endpoint is home  # ... in flight
    policy.on_complete(facts, home, 2.0, 0.5, True)
    home.kv_usage = 0.5  # the turn ended with room to spare: still cached
    policy.on_scrape(home)
    assert policy.pick(_facts(turn1 + [7] * 32), states, 3.0).endpoint is home
    assert policy.index.size(home.id) == 200
    home.kv_usage = 1.0  # then other requests filled the engine: the idle turn is evicted
    assert policy.view(_facts(turn1), states).depths == {home.id: 200}  # (not before a scrape)
    policy.on_scrape(home)
    other = next(s for s in states if s is not home)
    home.in_flight, other.in_flight = 3, 2
    again = policy.pick(_facts(turn1 + [7] * 32), states, 4.0)
    assert again.cached_tokens == 0 and again.endpoint is other
    # the turn's output is idle room too (placeholders: 640 tokens = 40 blocks)
    again_facts = _facts(turn1 + [7] * 32, "t2")
    policy.on_dispatch(again_facts, other, 5.0)
    policy.on_complete(again_facts, other, 6.0, 0.2, True, output_tokens=640)
    assert policy.index.size(other.id) == 202 + 40
    # the same without the model: the index still believes the engine holds it
    plain = make_policy("affinity_cost", free_queue=False)
    _route(plain, _facts(turn1, "t1"), [home])
    assert plain.view(_facts(turn1 + [7] * 32), states).depths == {home.id: 200}
