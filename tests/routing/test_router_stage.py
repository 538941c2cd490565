"""Pools and prompt classes, versions (canary), LoRA candidates, session affinity, the Router."""

from __future__ import annotations

import pytest

from sluice.routing import Endpoint, EndpointState, NoEndpointError, RequestFacts, make_policy
from sluice.routing.affinity import SessionAffinity
from sluice.routing.lora import lora_candidates, split_model_adapter
from sluice.routing.pools import FullWhen, PoolFullError, PoolMap, PoolRule, PromptClass
from sluice.routing.router import Router
from sluice.routing.versions import ModelVersion, VersionMap


def _state(i: int, pool: str = "default", models=("m",), loras=(), max_loras=0) -> EndpointState:
    s = EndpointState(Endpoint(f"e{i}", f"http://x:{i}", frozenset(models), pool=pool))
    s.loras = frozenset(loras)
    s.max_loras = max_loras
    return s


CLASSES = [
    PromptClass("batch", kind="batch"),
    PromptClass("chat", max_tokens=2048),
    PromptClass("long", min_tokens=2048),
]


def test_prompt_classes_by_size_and_kind() -> None:
    pools = PoolMap(CLASSES)
    assert pools.classify(RequestFacts("m", 100)) == "chat"
    assert pools.classify(RequestFacts("m", 2047)) == "chat"
    assert pools.classify(RequestFacts("m", 2048)) == "long"
    assert pools.classify(RequestFacts("m", 100, kind="batch")) == "batch"


def test_pool_rules_map_model_adapter_and_class_to_a_pool() -> None:
    states = [_state(0, "chat"), _state(1, "long"), _state(2, "lora")]
    pools = PoolMap(
        CLASSES,
        [
            PoolRule("lora", adapter="sql"),
            PoolRule("long", prompt_class="long"),
            PoolRule("chat", model="m", adapter=""),
        ],
    )
    assert [c.id for c in pools.select(RequestFacts("m", 10), "m", states).candidates] == ["e0"]
    long = pools.select(RequestFacts("m", 5000), "m", states)
    assert long.pool == "long" and [c.id for c in long.candidates] == ["e1"]
    sql = pools.select(RequestFacts("m", 5000, adapter="sql"), "m", states)
    assert [c.id for c in sql.candidates] == ["e2"]
    # no rule for another adapter: every candidate
    other = pools.select(RequestFacts("m", 10, adapter="x"), "m", states)
    assert other.pool is None and len(other.candidates) == 3


def test_full_pool_spills_in_order_or_waits() -> None:
    states = [_state(0, "chat"), _state(1, "spare"), _state(2, "batch")]
    states[0].kv_usage = 0.99
    spill = PoolMap(CLASSES, [PoolRule("chat", when_full="spill", spill_to=("batch", "spare"))])
    states[2].waiting = 50  # batch is full too
    choice = spill.select(RequestFacts("m", 10), "m", states)
    assert choice.pool == "spare" and "spilled from chat" in choice.note
    wait = PoolMap(CLASSES, [PoolRule("chat", when_full="wait")], wait_retry_after=0.25)
    with pytest.raises(PoolFullError) as err:
        wait.select(RequestFacts("m", 10), "m", states)
    assert err.value.retry_after == 0.25 and err.value.pool == "chat"
    # nowhere to spill: stay home rather than fail
    stay = PoolMap(CLASSES, [PoolRule("chat", spill_to=("batch",))])
    assert stay.select(RequestFacts("m", 10), "m", states).candidates == [states[0]]
    with pytest.raises(ValueError):
        PoolMap(CLASSES, [PoolRule("chat", when_full="drop")])


def test_full_when_limits() -> None:
    s = _state(0)
    rule = FullWhen(max_in_flight=2, max_waiting=3, kv_usage=0.9)
    assert not rule.full(s)
    s.in_flight = 2
    assert rule.full(s)
    s.in_flight, s.waiting = 0, 3
    assert rule.full(s)
    s.waiting, s.kv_usage = 0, 0.9
    assert rule.full(s)


def test_canary_split_proportions_and_header_pin() -> None:
    versions = VersionMap({"m": [ModelVersion("m-v1", 95), ModelVersion("m-v2", 5)]})
    by_request = [
        versions.resolve(RequestFacts("m", 1, request_id=f"r{i}")).model for i in range(20_000)
    ]
    share = by_request.count("m-v2") / len(by_request)
    assert 0.04 < share < 0.06
    anonymous = [versions.resolve(RequestFacts("m", 1)).model for _ in range(1000)]
    assert anonymous.count("m-v2") in range(45, 56)
    # a session always sees the same version
    seen = {
        versions.resolve(RequestFacts("m", 1, session_key="u7", request_id=f"{i}")).model
        for i in range(50)
    }
    assert len(seen) == 1
    pinned = versions.resolve(RequestFacts("m", 1, version_override="m-v2"))
    assert pinned.model == "m-v2" and "pinned" in pinned.reason
    assert versions.resolve(RequestFacts("other", 1)).model == "other"
    full = VersionMap({"m": [ModelVersion("m-v1", 0), ModelVersion("m-v2", 100)]})
    assert {full.resolve(RequestFacts("m", 1, request_id=str(i))).model for i in range(100)} == {
        "m-v2"
    }
    with pytest.raises(ValueError):
        VersionMap({"m": [ModelVersion("a", 0)]})


def test_lora_prefers_loaded_then_free_slot_never_incapable() -> None:
    loaded = _state(0, loras=("sql",), max_loras=2)
    free = _state(1, loras=("a",), max_loras=2)
    full = _state(2, loras=("a", "b"), max_loras=2)
    no_lora = _state(3)
    choice = lora_candidates("sql", [loaded, free, full, no_lora])
    assert choice.candidates == [loaded] and choice.load_adapter is None
    choice = lora_candidates("new", [loaded, free, full, no_lora])
    assert choice.candidates == [loaded, free] and choice.load_adapter == "new"
    assert lora_candidates("new", [full, no_lora]).candidates == []
    assert split_model_adapter("llama:sql") == ("llama", "sql")
    assert split_model_adapter("llama") == ("llama", None)
    assert split_model_adapter(":x") == (":x", None)


def test_session_affinity_ttl_and_bound() -> None:
    aff = SessionAffinity(ttl=10, max_entries=3)
    aff.bind("a", "e1", now=0)
    assert aff.lookup("a", 9.9) == "e1"
    assert aff.lookup("a", 10.0) is None
    for i, key in enumerate("bcde"):
        aff.bind(key, f"e{i}", now=20)
    assert len(aff) == 3 and aff.lookup("b", 21) is None
    aff.bind("c", "e9", now=25)  # refreshed: c outlives d and e
    assert aff.lookup("d", 31) is None and aff.lookup("c", 31) == "e9"
    aff.bind("z", "e0", now=100)  # expired entries are purged on the way
    assert len(aff) == 1


def test_router_applies_version_lora_pool_and_affinity() -> None:
    states = [
        _state(0, models=("m-v1",)),
        _state(1, models=("m-v1",), loras=("sql",), max_loras=4),
        _state(2, models=("m-v2",), max_loras=4),
    ]
    router = Router(
        make_policy("least_load"),
        versions=VersionMap({"m": [ModelVersion("m-v1", 1), ModelVersion("m-v2", 0)]}),
        affinity=SessionAffinity(ttl=60),
    )
    d = router.route(RequestFacts("m", 10, request_id="r"), states, 0.0)
    assert d.upstream_model == "m-v1" and d.endpoint.id in {"e0", "e1"}
    lora = router.route(RequestFacts("m", 10, adapter="sql"), states, 0.0)
    assert lora.endpoint.id == "e1" and lora.upstream_model == "sql" and lora.load_adapter is None
    with pytest.raises(NoEndpointError, match="adapter"):
        router.route(RequestFacts("m", 10, adapter="new"), states[:1], 0.0)
    states[0].in_flight = 5
    first = router.route(RequestFacts("m", 10, session_key="s"), states, 0.0)
    assert first.endpoint.id == "e1"
    states[1].in_flight = 9  # busier now, but the session sticks while not full
    again = router.route(RequestFacts("m", 10, session_key="s"), states, 1.0)
    assert again.endpoint.id == "e1" and "session affinity" in again.reason
    states[1].kv_usage = 0.99  # full: the session moves, and re-binds
    moved = router.route(RequestFacts("m", 10, session_key="s"), states, 2.0)
    assert moved.endpoint.id == "e0"
    assert router.affinity is not None and router.affinity.lookup("s", 3.0) == "e0"
    states[1].ejected_until = 100.0  # the holder is gone: a free slot elsewhere loads it
    with pytest.raises(NoEndpointError):
        router.route(RequestFacts("m", 1, adapter="sql"), states, 5.0)
    states[0].max_loras = 1
    assert router.route(RequestFacts("m", 1, adapter="sql"), states, 5.0).load_adapter == "sql"
