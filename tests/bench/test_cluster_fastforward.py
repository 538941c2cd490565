"""Decode fast-forward (``simulate(fast_forward=True)``) against stepping every engine step.

Both paths must give the same per-request results (times bit for bit), the same engine counters
and the same ITL histogram, for every workload kind and policy, under KV pressure (preemption,
eviction) and with simultaneous events.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sluice.routing  # noqa: F401 - registers every policy
from sluice.bench.cluster import simulate
from sluice.bench.cluster.engines import EngineHandle
from sluice.bench.cluster.facts import token_block_facts
from sluice.bench.cluster.result import RunResult
from sluice.bench.workloads import (
    LongDocQAConfig,
    MultiTurnConfig,
    RandomConfig,
    SharedPrefixConfig,
    WorkloadRequest,
    long_doc_qa,
    multi_turn,
    random_control,
    shared_prefix,
)
from sluice.routing import Decision, Policy, make_policy
from sluice.sim.engine import Engine, EngineConfig

BLIND = ("round_robin", "least_load")


def outcome(result: RunResult) -> tuple:
    records = sorted(
        (r.request_id, r.endpoint, r.start, r.first_token, r.end, r.output_tokens,
         r.cached_tokens, r.ok, r.error)
        for r in result.records
    )  # fmt: skip
    engines = [
        (e.endpoint, e.requests, e.prefix_queries, e.prefix_hits, e.steps, e.peak_running,
         e.peak_waiting)
        for e in result.engines
    ]  # fmt: skip
    return records, engines, result.itl.counts, result.itl.total, result.sim_time


class Run:
    def __init__(self, result: RunResult, engines: list[Engine]) -> None:
        self.result = result
        self.engines = engines


def both(workload: list[WorkloadRequest], policy: object, **kwargs) -> tuple[Run, Run]:
    """The workload simulated stepping, then fast-forwarding (``policy``: a name or a factory)."""
    if isinstance(policy, str) and policy not in BLIND:
        kwargs.setdefault("facts_builder", token_block_facts("sim-model", 16))
    config = kwargs.pop("engine_config", None) or EngineConfig()
    runs = []
    for fast in (False, True):
        engines: list[Engine] = []

        def factory(i: int, engines: list[Engine] = engines) -> EngineHandle:
            engines.append(Engine(config))
            return EngineHandle(engines[-1])

        result = simulate(
            list(workload),
            policy=make_policy(policy) if isinstance(policy, str) else policy(),
            fast_forward=fast,
            load_sample_interval=0.5,
            engine_factory=factory,
            **kwargs,
        )
        runs.append(Run(result, engines))
    return runs[0], runs[1]


def engine_totals(engine: Engine) -> tuple:
    s = engine.stats
    return (
        s.prompt_tokens_total, s.generation_tokens_total, s.prefix_cache_queries_total,
        s.prefix_cache_hits_total, s.num_preemptions_total, s.steps_total, engine.now,
        engine.pool.num_free, sorted(engine.pool.cached),
    )  # fmt: skip


def assert_same(step: Run, fast: Run) -> None:
    assert outcome(fast.result) == outcome(step.result)
    assert fast.result.load_series == step.result.load_series
    for a, b in zip(step.result.engines, fast.result.engines, strict=True):
        assert abs(a.busy_time - b.busy_time) <= 1e-9 * max(1.0, a.busy_time)
    for a, b in zip(step.engines, fast.engines, strict=True):
        assert engine_totals(b) == engine_totals(a)
        assert abs(a.stats.busy_time_total - b.stats.busy_time_total) <= 1e-9


WORKLOADS = {
    "random": random_control(
        RandomConfig(num_requests=60, input_len=300, output_len=40, rate=30, seed=3)
    ),
    "multi_turn": multi_turn(MultiTurnConfig(users=6, rounds=4, think_time=0.0)),
    "shared_prefix": shared_prefix(SharedPrefixConfig(num_groups=3, prompts_per_group=12, rate=20)),
    "long_doc_qa": long_doc_qa(LongDocQAConfig(num_documents=6, rate=4.0)),
}


def test_every_workload_and_policy_gives_the_same_results_fast_and_stepped() -> None:
    for name, workload in WORKLOADS.items():
        for policy in ("round_robin", "least_load", "affinity_cost", "prefix_affinity"):
            step, fast = both(workload, policy, engines=3)
            assert_same(step, fast), (name, policy)
            assert fast.result.events < step.result.events, (name, policy)  # fast path taken


def test_under_kv_pressure_preemption_and_eviction_match() -> None:
    cfg = EngineConfig(num_gpu_blocks=160, max_num_seqs=16, max_num_batched_tokens=512)
    workload = random_control(
        RandomConfig(num_requests=50, input_len=600, output_len=120, rate=40, seed=5)
    )
    step, fast = both(workload, "least_load", engines=2, engine_config=cfg)
    assert_same(step, fast)
    # The workload really is under pressure, and runs still happen between preemptions.
    assert sum(e.stats.num_preemptions_total for e in step.engines) > 0
    assert fast.result.events < step.result.events


def test_a_thousand_nearly_idle_engines_take_few_events() -> None:
    workload = random_control(
        RandomConfig(num_requests=200, input_len=200, output_len=100, rate=50, seed=9)
    )
    step, fast = both(workload, "round_robin", engines=100)
    assert_same(step, fast)
    assert fast.result.events * 10 < step.result.events


def test_without_prefix_caching_and_with_a_scrape_interval() -> None:
    workload = WORKLOADS["shared_prefix"]
    cfg = EngineConfig(enable_prefix_caching=False)
    assert_same(*both(workload, "least_load", engines=2, engine_config=cfg))
    # A scrape interval turns fast-forward off (the results must still agree).
    assert_same(*both(workload, "affinity_cost", engines=2, scrape_interval=0.05))


PREFIXES = [[], [7] * 40, [8] * 23]


@st.composite
def workloads(draw: st.DrawFn) -> list[WorkloadRequest]:
    """Small random workloads: arrivals on a coarse grid (simultaneous arrivals), shared
    prefixes, short and long answers, next turns that follow with no think time."""
    n = draw(st.integers(1, 25))
    out = []
    for i in range(n):
        prefix = PREFIXES[draw(st.integers(0, 2))]
        own = draw(st.integers(1, 50))
        parent = None
        if out and draw(st.integers(0, 3)) == 0:
            parent = out[draw(st.integers(0, len(out) - 1))].request_id
        out.append(
            WorkloadRequest(
                request_id=f"q{i}",
                arrival=draw(st.integers(0, 40)) * 0.025,
                prompt=prefix + [100 + i * 97 + k for k in range(own)],
                max_tokens=draw(st.integers(1, 60)),
                depends_on=parent,
                think_time=draw(st.sampled_from([0.0, 0.01])),
            )
        )
    out.sort(key=lambda r: r.arrival)
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workloads(),
    st.integers(1, 4),
    st.sampled_from(["round_robin", "least_load", "affinity_cost", "cost_model"]),
    st.sampled_from([24, 40, 400]),  # KV blocks: from preempting to roomy
    st.sampled_from([0.0, 0.01]),  # front-end time
)
@example(  # found by hypothesis: KV usage moved inside a decode run without the policy hearing
    # of it (Policy.on_scrape), so the free-queue index's bound lagged and q1 went elsewhere
    workload=[
        WorkloadRequest("q0", 0.0, [7] * 40 + [100], 1),
        WorkloadRequest("q2", 0.0, [294], 1, depends_on="q0"),
        WorkloadRequest("q4", 0.0, [488], 1),
        WorkloadRequest("q5", 0.0, [585], 1, depends_on="q0"),
        WorkloadRequest("q6", 0.0, [682], 1),
        WorkloadRequest("q3", 0.15, list(range(391, 419)), 36),
        WorkloadRequest("q1", 0.375, [7] * 40 + list(range(197, 221)), 1, depends_on="q0"),
    ],
    engines=2,
    policy="affinity_cost",
    blocks=24,
    overhead=0.0,
)
def test_random_workloads_match(workload, engines, policy, blocks, overhead) -> None:
    cfg = EngineConfig(
        block_size=4,
        num_gpu_blocks=blocks,
        max_num_seqs=6,
        max_num_batched_tokens=64,
        max_model_len=min(blocks - 1, 100) * 4,
        api_overhead_s=overhead,
    )
    step, fast = both(workload, policy, engines=engines, engine_config=cfg)
    assert_same(step, fast)


class ById(Policy):
    """Sends each request to the engine its id names (``"e1-..."`` to engine 1)."""

    name = "by_id"

    def choose(self, facts, candidates, now):
        return Decision(candidates[int(facts.request_id.split("-")[0][1:])], "by id")


def req(request_id: str, arrival: float, length: int, max_tokens: int, **kw) -> WorkloadRequest:
    prompt = [1000 + hash(request_id) % 5000 + k for k in range(length)]
    return WorkloadRequest(request_id, arrival, prompt, max_tokens, **kw)


def test_a_next_turn_dispatched_exactly_at_a_step_boundary_inside_a_run() -> None:
    """Engines 0 and 1 run in lockstep; when engine 0's request ends, its next turn goes to
    engine 1 at that very instant, the end of one of engine 1's steps inside a run. Stepping
    processes engine 1's step first, so the turn joins the step after the one starting then."""
    workload = [
        req("e0-a", 0.0, 64, 6),
        req("e1-b", 0.0, 64, 40),
        req("e1-c", 0.0, 30, 5, depends_on="e0-a"),
    ]
    cfg = EngineConfig(api_overhead_s=0.0)
    step, fast = both(workload, ById, engines=2, engine_config=cfg)
    assert_same(step, fast)
    recs = {r.request_id: r for r in step.result.records}
    assert recs["e1-c"].start == recs["e0-a"].end  # the tie this test is about


def test_an_arrival_exactly_at_a_step_boundary_inside_a_run() -> None:
    """A workload arrival at the very end of a step inside a run comes before that step's
    event, so (with no front-end time) it joins the step that begins then."""
    cfg = EngineConfig(api_overhead_s=0.0)
    probe, _ = both([req("e0-a", 0.0, 64, 12)], ById, engines=1, engine_config=cfg)
    boundary = probe.result.records[0].end  # engine 0 ends a step here when a runs longer
    workload = [req("e0-a", 0.0, 64, 40), req("e0-x", boundary, 20, 5)]
    step, fast = both(workload, ById, engines=1, engine_config=cfg)
    assert_same(step, fast)


def test_engines_reuse_the_routers_block_hashes_with_the_same_results() -> None:
    """Token-block facts carry the prompt's hashes; engines take them instead of hashing again,
    which must not change anything (they are the engine's own hashes)."""
    shared = token_block_facts("sim-model", 16)

    def unshared(req: WorkloadRequest):  # the same facts, without the block size to share by
        return shared(req)

    workload = WORKLOADS["shared_prefix"]
    a, _ = both(workload, "affinity_cost", engines=3, facts_builder=shared)
    b, _ = both(workload, "affinity_cost", engines=3, facts_builder=unshared)
    assert outcome(a.result) == outcome(b.result)
    assert a.result.prefix_hit_rate > 0.5
    # A block size the engines do not use is not shared (the engines hash for themselves).
    c, _ = both(
        workload, "affinity_cost", engines=3, facts_builder=token_block_facts("sim-model", 32)
    )
    assert outcome(c.result)[0] != () and c.result.prefix_hit_rate > 0.5
