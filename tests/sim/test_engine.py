"""The engine end to end: requests in, tokens out, on the virtual clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sluice.sim.block_hash import hash_block, hash_token_blocks, root_hash
from sluice.sim.engine import Engine, EngineConfig, RequestError, SamplingParams, SimRequest
from sluice.sim.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from sluice.sim.tokenizer import WordTokenizer, text_of_length

TOK = WordTokenizer()


def prompt(n: int, seed: int = 0) -> list[int]:
    return TOK.encode(text_of_length(n, seed))


def run(engine: Engine) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step().outputs:
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    return tokens


def test_repeated_prompt_hits_prefix_cache_in_tokens() -> None:
    engine = Engine(EngineConfig())
    p = prompt(1000)
    engine.add_request(SimRequest("a", p, SamplingParams(max_tokens=8)))
    run(engine)
    engine.add_request(SimRequest("b", p, SamplingParams(max_tokens=8)))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step().outputs
    assert outputs[-1].num_cached_tokens == 992  # 62 full blocks; the last token is recomputed
    assert engine.stats.prefix_cache_queries_total == 2000
    assert engine.stats.prefix_cache_hits_total == 992


def test_prompt_longer_than_context_is_refused_like_vllm() -> None:
    engine = Engine(EngineConfig(max_model_len=1024))
    with pytest.raises(RequestError, match="maximum context length is 1024 tokens"):
        engine.add_request(SimRequest("a", prompt(1000), SamplingParams(max_tokens=100)))


def chat_ids(messages: list[dict[str, str]]) -> list[int]:
    return TOK.encode(TOK.apply_chat_template(messages))


def test_generated_blocks_are_cached_so_the_next_turn_hits_the_answer() -> None:
    engine = Engine(EngineConfig())
    turn1 = [{"role": "user", "content": text_of_length(100, 7)}]
    ids1 = chat_ids(turn1)
    engine.add_request(SimRequest("t1", ids1, SamplingParams(max_tokens=1000)))
    answer = run(engine)["t1"]
    assert answer[-1] == TOK.eos_token_id  # a natural stop: the chat turn ends with <|eot_id|>
    turn2 = [
        *turn1,
        {"role": "assistant", "content": TOK.decode(answer)},
        {"role": "user", "content": "and then"},
    ]
    ids2 = chat_ids(turn2)
    assert ids2[: len(ids1) + len(answer)] == ids1 + answer  # the client re-sends our tokens
    engine.add_request(SimRequest("t2", ids2, SamplingParams(max_tokens=4)))
    first = engine.step().outputs[0]
    # Every full block of prompt + answer except the answer's last token (never computed).
    computed = len(ids1) + len(answer) - 1
    assert first.num_cached_tokens == computed // 16 * 16 > len(ids1)


def test_lora_requests_do_not_share_blocks_with_the_base_model() -> None:
    engine = Engine(EngineConfig())
    p = prompt(200)
    engine.add_request(SimRequest("base", p, SamplingParams(max_tokens=2)))
    run(engine)
    engine.add_request(SimRequest("lora", p, SamplingParams(max_tokens=2), lora_name="x"))
    engine.add_request(SimRequest("base2", p, SamplingParams(max_tokens=2)))
    outs = {o.request_id: o for o in engine.step().outputs}
    assert outs["lora"].num_cached_tokens == 0 and outs["base2"].num_cached_tokens == 192


def test_kv_usage_counts_referenced_blocks_only() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=101, api_overhead_s=0.0))
    engine.add_request(SimRequest("a", prompt(160), SamplingParams(max_tokens=5, ignore_eos=True)))
    engine.step()
    assert engine.stats.kv_cache_usage == pytest.approx(10 / 100)  # 160 computed tokens
    engine.step()
    assert engine.stats.kv_cache_usage == pytest.approx(11 / 100)  # the 161st needs a block
    run(engine)
    assert engine.stats.kv_cache_usage == 0.0 and len(engine.pool.cached) == 10


def test_output_lengths_follow_max_min_tokens_ignore_eos_and_a_seeded_natural_length() -> None:
    def lengths(seed: int, **sampling: object) -> dict[str, tuple[int, str | None]]:
        engine = Engine(EngineConfig(seed=seed))
        for i in range(20):
            engine.add_request(SimRequest(f"r{i}", prompt(20, i), SamplingParams(**sampling)))
        got: dict[str, tuple[int, str | None]] = {}
        while engine.has_unfinished():
            for out in engine.step().outputs:
                if out.finished:
                    got[out.request_id] = (out.num_output_tokens, out.finish_reason)
        return got

    natural = lengths(0, max_tokens=4000)
    assert natural == lengths(0, max_tokens=4000)  # deterministic
    assert natural != lengths(1, max_tokens=4000)  # ...per seed
    assert {reason for _, reason in natural.values()} == {"stop"}
    assert len({n for n, _ in natural.values()}) > 10
    capped = lengths(0, max_tokens=50)
    assert all(n <= 50 for n, _ in capped.values())
    assert {r for n, r in capped.values() if n == 50} == {"length"}
    assert all(n >= 30 for n, _ in lengths(0, max_tokens=50, min_tokens=30).values())
    assert set(lengths(0, max_tokens=7, ignore_eos=True).values()) == {(7, "length")}


def test_stop_strings_and_stop_token_ids_end_a_request() -> None:
    def tokens(**sampling: object) -> tuple[list[int], str | None]:
        engine = Engine(EngineConfig())
        engine.add_request(SimRequest("same-id", prompt(20), SamplingParams(**sampling)))
        out: list[int] = []
        reason = None
        while engine.has_unfinished():
            for o in engine.step().outputs:
                out += o.new_token_ids
                reason = o.finish_reason
        return out, reason

    full, _ = tokens(max_tokens=30, ignore_eos=True)
    word = TOK.decode([full[9]])
    assert tokens(max_tokens=30, ignore_eos=True, stop=[word]) == (full[:10], "stop")
    assert tokens(max_tokens=30, ignore_eos=True, stop_token_ids=[full[4]]) == (full[:5], "stop")


def test_requests_the_engine_refuses() -> None:
    engine = Engine(EngineConfig(max_model_len=1024))
    with pytest.raises(RequestError) as info:
        engine.add_request(SimRequest("a", prompt(1000), SamplingParams(max_tokens=100)))
    assert str(info.value) == (
        "This model's maximum context length is 1024 tokens. However, you requested 1100 tokens "
        "(1000 in the messages, 100 in the completion). Please reduce the length of the messages "
        "or completion."
    )
    with pytest.raises(RequestError, match="empty"):
        engine.add_request(SimRequest("b", [], SamplingParams()))
    with pytest.raises(RequestError, match="max_tokens must be at least 1"):
        engine.add_request(SimRequest("c", [1], SamplingParams(max_tokens=0)))
    with pytest.raises(RequestError, match="Token id 128256 is out of vocabulary"):
        engine.add_request(SimRequest("e", [1, 128256], SamplingParams()))
    engine.add_request(SimRequest("d", [1], SamplingParams()))
    with pytest.raises(RequestError, match="already running"):
        engine.add_request(SimRequest("d", [1], SamplingParams()))
    with pytest.raises(ValueError, match="unknown GPU"):
        Engine(EngineConfig(gpu="tpu"))


def test_a_future_arrival_idles_the_clock_forward() -> None:
    engine = Engine(EngineConfig(api_overhead_s=0.01))
    engine.add_request(SimRequest("a", prompt(50), SamplingParams(max_tokens=1), arrival_time=2.0))
    step = engine.step()
    assert step.outputs[0].timing.first_scheduled == pytest.approx(2.01)
    assert step.duration == pytest.approx(2.01 + engine.latency.prefill_time(50))
    assert engine.stats.busy_time_total == pytest.approx(engine.latency.prefill_time(50))
    engine.advance_to(1.0)  # never backwards
    assert engine.now == pytest.approx(step.duration)


def test_reset_prefix_cache_publishes_all_blocks_cleared() -> None:
    events: list[object] = []
    engine = Engine(EngineConfig(), kv_event_sink=events.extend)
    engine.add_request(SimRequest("a", prompt(64), SamplingParams(max_tokens=20)))
    engine.step()
    assert engine.reset_prefix_cache() is False  # a running request holds blocks
    run(engine)
    assert engine.reset_prefix_cache() is True
    assert isinstance(events[-1], AllBlocksCleared) and not engine.pool.cached


# -- random workloads: KV events mirror the pool, the fused decode path changes nothing --------

BS = 4
PREFIXES = [list(range(100 * k, 100 * k + 24)) for k in range(3)]

operation = st.one_of(
    st.tuples(
        st.just("add"),
        st.integers(0, 2),  # shared prefix
        st.integers(1, 40),  # own suffix length
        st.integers(1, 30),  # max_tokens
        st.booleans(),  # ignore_eos
        st.sampled_from([None, "ad", "bd"]),  # LoRA (at most one adapter per batch)
        st.integers(0, 3),  # priority
    ),
    st.tuples(st.just("step"), st.integers(1, 6)),
    st.tuples(st.just("abort"), st.integers(0, 30)),
    st.tuples(st.just("reset")),
)


def small_engine(policy: str, fast: bool, sink: Callable[[list[KVEvent]], None]) -> Engine:
    config = EngineConfig(
        block_size=BS,
        num_gpu_blocks=40,
        max_num_batched_tokens=48,
        max_num_seqs=5,
        scheduling_policy=policy,
        max_loras=1,
        api_overhead_s=0.0,
    )
    engine = Engine(config, kv_event_sink=sink)
    engine.fast_decode = fast
    return engine


def play(engine: Engine, ops: list[tuple], after_step: Callable[[], None]) -> list[tuple]:
    """Apply ``ops``, then drain; returns every output as a comparable tuple."""
    seen: list[tuple] = []
    added = 0

    def step() -> None:
        out = engine.step()
        seen.append((out.duration, out.num_scheduled_tokens, out.num_batched_requests))
        for o in out.outputs:
            t = o.timing
            seen.append(
                (o.request_id, tuple(o.new_token_ids), o.finish_reason, o.num_cached_tokens,
                 t.first_scheduled, t.first_token, t.finished)
            )  # fmt: skip
        after_step()

    for op in ops:
        if op[0] == "add":
            _, prefix, suffix, max_tokens, ignore_eos, lora, priority = op
            tokens = PREFIXES[prefix] + [added * 1000 + i for i in range(suffix)]
            sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos)
            engine.add_request(SimRequest(f"r{added}", tokens, sampling, lora, priority))
            added += 1
        elif op[0] == "step":
            for _ in range(op[1]):
                step()
        elif op[0] == "abort":
            engine.abort(f"r{op[1]}")
        else:
            engine.reset_prefix_cache()
    guard = 0
    while engine.has_unfinished():
        step()
        guard += 1
        assert guard < 10_000, "engine did not drain"
    return seen


# A workload that surely preempts, evicts, aborts and resets, whatever hypothesis draws besides.
PRESSURE = [
    ("add", 0, 40, 30, True, None, 0),
    ("add", 1, 40, 30, True, None, 1),
    ("add", 2, 40, 30, True, None, 2),
    ("add", 0, 35, 30, True, "ad", 3),
    ("step", 6),
    ("add", 1, 30, 20, True, None, 0),
    ("abort", 1),
    ("add", 2, 40, 30, True, "bd", 1),
    ("step", 3),
    ("reset",),
    ("add", 0, 8, 12, False, None, 0),
]


class Mirror:
    """What a precise prefix router rebuilds from the event stream alone."""

    def __init__(self) -> None:
        self.blocks: dict[int, int | None] = {}

    def apply(self, events: list[KVEvent]) -> None:
        for event in events:
            if isinstance(event, BlockStored):
                parent = event.parent_block_hash
                chain = root_hash(event.lora_name) if parent is None else parent
                for i, h in enumerate(event.block_hashes):
                    assert h not in self.blocks, "a hash stored twice"
                    tokens = event.token_ids[i * event.block_size : (i + 1) * event.block_size]
                    chain = hash_block(chain, tokens)
                    assert chain == h, "the hash cannot be rebuilt from the event's tokens"
                    self.blocks[h] = parent
                    parent = h
            elif isinstance(event, BlockRemoved):
                for h in event.block_hashes:
                    del self.blocks[h]
            else:
                self.blocks.clear()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40), st.sampled_from(["fcfs", "priority"]))
@example(PRESSURE, "fcfs")
@example(PRESSURE, "priority")
# Found by hypothesis: a step that preempts but schedules nothing must still refresh KV usage.
@example(
    [
        ("add", 0, 1, 1, False, None, 0),
        ("add", 0, 1, 1, False, None, 0),
        ("add", 0, 1, 13, False, "bd", 0),
        ("add", 0, 8, 22, False, None, 1),
        ("add", 0, 22, 9, False, "ad", 0),
        ("add", 1, 1, 19, False, None, 0),
        ("add", 1, 20, 3, False, "ad", 0),
    ],
    "priority",
)
def test_kv_events_exactly_mirror_the_pool(ops: list[tuple], policy: str) -> None:
    mirror = Mirror()
    engine = small_engine(policy, True, mirror.apply)

    def check() -> None:
        assert set(mirror.blocks) == set(engine.pool.cached)
        pool = engine.pool
        referenced = sum(1 for b in pool.blocks[1:] if b.ref_cnt > 0)
        assert engine.stats.kv_cache_usage == pytest.approx(referenced / (pool.num_blocks - 1))

    play(engine, ops, check)
    assert engine.pool.num_free == engine.pool.num_blocks - 1  # everything given back


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40), st.sampled_from(["fcfs", "priority"]))
@example(PRESSURE, "fcfs")
@example(PRESSURE, "priority")
def test_fused_decode_path_is_identical_to_the_general_path(ops: list[tuple], policy: str) -> None:
    fast_events: list[KVEvent] = []
    slow_events: list[KVEvent] = []
    fast = small_engine(policy, True, fast_events.extend)
    slow = small_engine(policy, False, slow_events.extend)
    assert play(fast, ops, lambda: None) == play(slow, ops, lambda: None)
    assert fast_events == slow_events
    assert fast.stats == slow.stats
    assert fast.now == slow.now


def test_the_fused_decode_path_is_taken_in_steady_state() -> None:
    engine = Engine(EngineConfig(api_overhead_s=0.0))
    for i in range(8):
        engine.add_request(SimRequest(f"r{i}", prompt(40, i), SamplingParams(max_tokens=50)))
    engine.step()
    assert engine._decode_context == sum(s.num_computed_tokens for s in engine.scheduler.running)
    calls = 0
    general = engine.scheduler.schedule

    def counting_schedule(now: float) -> object:
        nonlocal calls
        calls += 1
        return general(now)

    engine.scheduler.schedule = counting_schedule  # type: ignore[method-assign]
    for _ in range(10):
        assert len(engine.step().outputs) == 8
    assert calls == 0


def test_cache_geometry_is_exposed_for_scrapers_and_the_cluster_simulator() -> None:
    engine = Engine(EngineConfig(block_size=32))
    assert engine.block_size == 32
    assert engine.num_gpu_blocks == engine.config.num_gpu_blocks == 27775 // 2


def test_without_prefix_caching_nothing_hits_and_nothing_is_published() -> None:
    events: list[KVEvent] = []
    engine = Engine(EngineConfig(enable_prefix_caching=False), kv_event_sink=events.extend)
    p = prompt(300)
    for rid in ("a", "b"):
        engine.add_request(SimRequest(rid, p, SamplingParams(max_tokens=3)))
        run(engine)
    assert engine.stats.prefix_cache_hits_total == 0 and events == []
    assert engine.pool.cached == {}


def test_tensor_parallel_engine_for_the_70b_model() -> None:
    engine = Engine(EngineConfig(model="llama-3.1-70b", tensor_parallel=4))
    assert engine.num_gpu_blocks == 29799
    engine.add_request(SimRequest("a", prompt(10), SamplingParams(max_tokens=2)))
    first = engine.step()
    assert first.duration > engine.config.api_overhead_s
    with pytest.raises(ValueError, match="must divide the 8 KV heads"):
        Engine(EngineConfig(model="llama-3.1-70b", tensor_parallel=3))


def test_under_pressure_the_least_recently_used_prompt_is_evicted_tail_first() -> None:
    events: list[KVEvent] = []
    engine = Engine(EngineConfig(num_gpu_blocks=13), kv_event_sink=events.extend)  # 12 usable
    prompts = {name: prompt(64, seed) for seed, name in enumerate("ABCD")}  # 4 blocks each
    hashes = {name: hash_token_blocks(p, 16) for name, p in prompts.items()}

    def serve(name: str, rid: str) -> int:
        engine.add_request(SimRequest(rid, prompts[name], SamplingParams(max_tokens=1)))
        cached = None
        while engine.has_unfinished():
            for out in engine.step().outputs:
                cached = out.num_cached_tokens
        assert cached is not None
        return cached

    for name in "ABC":
        serve(name, name)
    assert serve("A", "A again") == 48  # A is now the most recently used
    events.clear()
    serve("D", "D")  # needs 4 blocks: the LRU prompt, B, goes, its last block first
    removed = [h for e in events if isinstance(e, BlockRemoved) for h in e.block_hashes]
    assert removed == hashes["B"][::-1]
    assert serve("C", "C again") == 48 and serve("A", "A third") == 48
    assert serve("B", "B again") == 0


def test_the_pressure_workload_really_preempts_and_evicts() -> None:
    """Guards the explicit hypothesis examples above against silently losing their pressure."""
    events: list[KVEvent] = []
    engine = small_engine("fcfs", True, events.extend)
    play(engine, PRESSURE, lambda: None)
    assert engine.stats.num_preemptions_total > 0
    assert any(isinstance(e, BlockRemoved) for e in events)
    assert engine.stats.request_success_total["abort"] == 1
