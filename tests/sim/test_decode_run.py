"""Decode runs (``Engine.plan_decode_run`` / ``advance_decode_run``) against stepping."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sluice.sim.engine import Engine, SamplingParams, SimRequest
from sluice.sim.kv_events import KVEvent
from tests.sim.test_engine import PREFIXES, PRESSURE, operation, small_engine


def pool_state(engine: Engine) -> tuple:
    pool = engine.pool
    order = []
    block = pool.free_queue._head.next_free
    while block is not pool.free_queue._tail:
        order.append(block.block_id)
        block = block.next_free
    cached = sorted((h, b.block_id) for h, b in pool.cached.items())
    refs = [(b.block_id, b.ref_cnt, b.block_hash) for b in pool.blocks]
    return pool.free_queue.num_free, pool.free_queue.num_fresh, order, cached, refs


def drive(engine: Engine, ops: list[tuple], use_runs: bool) -> list[tuple]:
    """Apply ``ops``; a "step k" is k steps, taken as decode runs where one is planned.
    Returns the final output of every request (decode runs produce no others)."""
    finals: list[tuple] = []
    added = 0

    def steps(k: int) -> None:
        while k > 0:
            run = engine.plan_decode_run() if use_runs else None
            if run is not None:
                taken = min(k, run.num_steps)
                engine.advance_decode_run(run, taken)
                k -= taken
                continue
            for o in engine.step().outputs:
                if o.finished:
                    t = o.timing
                    finals.append(
                        (o.request_id, o.finish_reason, o.num_output_tokens, o.num_cached_tokens,
                         t.first_scheduled, t.first_token, t.finished)
                    )  # fmt: skip
            k -= 1

    for op in ops:
        if op[0] == "add":
            _, prefix, suffix, max_tokens, ignore_eos, lora, priority = op
            tokens = PREFIXES[prefix] + [added * 1000 + i for i in range(suffix)]
            sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos)
            engine.add_request(SimRequest(f"r{added}", tokens, sampling, lora, priority))
            added += 1
        elif op[0] == "step":
            steps(op[1])
        elif op[0] == "abort":
            engine.abort(f"r{op[1]}")
        else:
            engine.reset_prefix_cache()
    guard = 0
    while engine.has_unfinished():
        steps(1)
        guard += 1
        assert guard < 10_000, "engine did not drain"
    return finals


LONG = [  # long answers and room: decode runs of many steps, cut by the next add
    ("add", 0, 20, 30, True, None, 0),
    ("add", 1, 10, 28, True, None, 0),
    ("step", 9),
    ("add", 2, 5, 12, True, None, 0),
    ("step", 4),
    ("abort", 1),
    ("add", 0, 20, 30, True, None, 0),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40), st.sampled_from(["fcfs", "priority"]))
@example(PRESSURE, "fcfs")
@example(LONG, "fcfs")
@example(LONG, "priority")
def test_decode_runs_leave_the_engine_as_stepping_does(ops: list[tuple], policy: str) -> None:
    """Same final outputs, KV events (one batch per run, same sequence), stats, clock and pool."""
    step_events: list[KVEvent] = []
    run_events: list[KVEvent] = []
    stepping = small_engine(policy, True, step_events.extend)
    running = small_engine(policy, True, run_events.extend)
    assert drive(running, ops, True) == drive(stepping, ops, False)
    assert run_events == step_events
    assert running.now == stepping.now
    assert running.stats.steps_total == stepping.stats.steps_total
    assert abs(running.stats.busy_time_total - stepping.stats.busy_time_total) < 1e-12
    running.stats.busy_time_total = stepping.stats.busy_time_total
    assert running.stats == stepping.stats
    assert pool_state(running) == pool_state(stepping)


def test_the_long_example_really_runs() -> None:
    engine = small_engine("fcfs", True, None)
    taken = []
    original = engine.advance_decode_run

    def spy(run, steps):
        taken.append(steps)
        original(run, steps)

    engine.advance_decode_run = spy  # type: ignore[method-assign]
    drive(engine, LONG, True)
    assert max(taken) >= 5 and len(taken) >= 3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40), st.sampled_from(["fcfs", "priority"]))
@example(PRESSURE, "fcfs")
def test_the_pool_behaves_the_same_without_an_event_sink(ops: list[tuple], policy: str) -> None:
    """Without a sink the pool takes faster paths (fused allocation, no-event registration)."""
    with_sink = small_engine(policy, True, lambda events: None)
    without = small_engine(policy, True, None)
    assert drive(without, ops, True) == drive(with_sink, ops, True)
    assert without.stats == with_sink.stats
    assert pool_state(without) == pool_state(with_sink)
