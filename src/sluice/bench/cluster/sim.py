"""Discrete-event cluster simulator: N simulated engines, the gateway's own routing policies.

Virtual time, no HTTP. One event heap holds engine step completions and deferred dispatches;
workload arrivals are pulled lazily from the (arrival-ordered) workload. On arrival the request is
routed with the *same* ``Policy`` object the gateway uses, against the same ``EndpointState``
bookkeeping (``begin`` / ``first_token`` / ``end``, ``on_dispatch`` / ``on_complete``); the
engine-reported fields (running, waiting, KV usage) are refreshed from each engine after its steps,
at most every ``scrape_interval`` simulated seconds, to mimic the gateway's scrape staleness.

An engine steps whenever it has work: ``step()`` picks the batch and its duration ``d`` at time
``t``; its outputs (first tokens, next tokens, completions) take effect at ``t + d``.

Fast-forward: with 1,000 engines each one mostly decodes one to three requests, so a request
costs hundreds of nearly empty steps. When an engine only has decoding requests, its steps up to
the next request stop, pending arrival or block shortage are determined in advance
(``sluice.sim.decode_run``): the engine plans them as one *run* and a single event at the run's
end applies them all. A request routed to the engine mid-run cuts it: the steps begun by then
are applied (the one in progress becomes an ordinary step) and the request joins the next step,
as it would have. The only engine state policies read that changes inside a run is KV usage;
it is updated at the steps that allocate a block ("ticks"), before every routing decision.
Results are identical to stepping (``fast_forward=False``); tests compare them.

Ties: at equal times workload arrivals come first, then engine events by engine index, then
deferred dispatches in the order they were pushed. The order does not depend on when an event was
pushed, so stepping and fast-forward order simultaneous events alike.
"""

from __future__ import annotations

import gc
import heapq
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sluice.bench.cluster.engines import EngineHandle, make_engines
from sluice.bench.cluster.result import EngineReport, RunResult
from sluice.bench.metrics import LogHistogram, RequestRecord
from sluice.bench.workloads.base import WorkloadRequest
from sluice.routing.endpoint import Endpoint, EndpointState
from sluice.routing.facts import RequestFacts
from sluice.routing.policy import Policy, make_policy
from sluice.sim.decode_run import DecodeRun
from sluice.sim.request import RequestError

FactsBuilder = Callable[[WorkloadRequest], RequestFacts]

_STEP = 0  # an engine step ends: its outputs take effect
_RUN = 1  # a decode run ends: all its steps take effect
_DISPATCH = 2
_ENGINE_EVENT = 0  # heap rank: at equal times engine events go first (by engine index)
_DEFERRED = 1  # then dispatches (by push order)
_EMPTY_STEP_WAIT = 0.001


@dataclass(slots=True)
class _Live:
    req: WorkloadRequest
    facts: RequestFacts
    state: EndpointState
    engine: int
    start: float
    prefill: int
    first: float | None = None
    last: float = 0.0
    out: int = 0
    cached: int | None = None


def default_facts(model: str) -> FactsBuilder:
    def build(req: WorkloadRequest) -> RequestFacts:
        return RequestFacts(
            model=model,
            prompt_tokens=len(req.prompt),
            max_tokens=req.max_tokens,
            session_key=req.session_id,
            request_id=req.request_id,
            stream=True,
        )

    return build


def simulate(
    workload: Iterable[WorkloadRequest],
    *,
    engines: int = 8,
    policy: Policy | str = "round_robin",
    engine_config: object | None = None,
    engine_factory: Callable[[int], EngineHandle] | None = None,
    facts_builder: FactsBuilder | None = None,
    model: str = "sim-model",
    scrape_interval: float = 0.0,
    load_sample_interval: float = 0.0,
    progress: Callable[[int], None] | None = None,
    fast_forward: bool = True,
) -> RunResult:
    """Run ``workload`` through ``engines`` simulated engines routed by ``policy``.

    ``engine_config`` is a ``sluice.sim.engine.EngineConfig`` (default: the simulator's default);
    ``engine_factory(i)`` overrides it (e.g. heterogeneous fleets). ``facts_builder`` turns a
    workload request into ``RequestFacts`` (add block hashes for prefix-aware policies).
    ``fast_forward`` jumps over pure-decode steps (same results); it needs ``scrape_interval`` 0,
    as a stale scrape would have to be replayed step by step.
    """
    # Pause the cyclic garbage collector for the run: it finds nearly nothing here (requests'
    # objects go by reference counting), but a thousand engines' millions of long-lived KV
    # blocks made its full passes cost ~28% of the run.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _simulate(
            workload, engines, policy, engine_config, engine_factory, facts_builder, model,
            scrape_interval, load_sample_interval, progress, fast_forward,
        )  # fmt: skip
    finally:
        if collecting:
            gc.enable()


def _simulate(
    workload: Iterable[WorkloadRequest],
    engines: int,
    policy: Policy | str,
    engine_config: object | None,
    engine_factory: Callable[[int], EngineHandle] | None,
    facts_builder: FactsBuilder | None,
    model: str,
    scrape_interval: float,
    load_sample_interval: float,
    progress: Callable[[int], None] | None,
    fast_forward: bool,
) -> RunResult:
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    pol = make_policy(policy) if isinstance(policy, str) else policy
    handles = (
        [engine_factory(i) for i in range(engines)]
        if engine_factory
        else make_engines(engines, engine_config)
    )
    states = [
        EndpointState(Endpoint(id=f"engine-{i}", url=f"sim://{i}", models=frozenset({model})))
        for i in range(engines)
    ]
    for h, st in zip(handles, states, strict=True):
        h.refresh(st)
    index = {st.id: i for i, st in enumerate(states)}
    build = facts_builder or default_facts(model)
    # Token-block facts hold the prompt's block hashes: engines reuse them instead of hashing
    # the prompt a second time (only when they are the engine's own; EngineHandle checks).
    hash_block_size: int | None = getattr(build, "block_size", None)
    # Simulated endpoints are never probed or ejected, so ``Policy.pick``'s availability filter
    # would keep every candidate: go straight to ``choose`` (a 1,000-way scan less per request).
    choose = pol.choose if type(pol).pick is Policy.pick else pol.pick
    reports = [EngineReport(st.id) for st in states]

    heap: list[tuple[float, int, int, int, int, object]] = []  # (t, rank, key, seq, kind, x)
    seq = 0
    pending_out: list[object] = [None] * engines
    busy = [False] * engines
    last_scrape = [0.0] * engines
    fast = fast_forward and scrape_interval <= 0
    runs: list[DecodeRun | None] = [None] * engines
    ticks: list[tuple[float, int, int, int, DecodeRun]] = []  # (t, engine, seq, step, run)
    live: dict[str, _Live] = {}
    children: dict[str, list[WorkloadRequest]] = {}
    finished: dict[str, float] = {}
    records: list[RequestRecord] = []
    itl = LogHistogram()
    load_series: list[tuple[float, list[int]]] = []
    next_sample = 0.0
    events = 0
    now = 0.0

    def push_engine_event(t: float, i: int, kind: int, payload: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, _ENGINE_EVENT, i, seq, kind, payload))

    def push_dispatch(t: float, req: WorkloadRequest) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, _DEFERRED, seq, seq, _DISPATCH, req))

    def start_step(i: int, t: float, allow_run: bool = True) -> None:
        if allow_run and fast:
            run = handles[i].plan_run(t)
            if run is not None:
                begin_run(i, run)
                return
        end, outputs = handles[i].step(t)
        duration = end - t
        if duration <= 0 and not outputs:
            if not handles[i].has_work():
                busy[i] = False
                return
            duration = _EMPTY_STEP_WAIT  # nothing schedulable yet (e.g. no free KV blocks)
            end = t + duration
        busy[i] = True
        pending_out[i] = outputs
        rep = reports[i]
        rep.steps += 1
        rep.busy_time += duration
        push_engine_event(end, i, _STEP, i)

    def begin_run(i: int, run: DecodeRun) -> None:
        runs[i] = run
        busy[i] = True
        push_engine_event(run.ends[-1], i, _RUN, run)
        push_tick(i, run, 0)

    def push_tick(i: int, run: DecodeRun, after: int) -> None:
        """Queue the scrape-visible KV change of the run's first allocating step after ``after``."""
        nonlocal seq
        steps = run.alloc_steps
        k = bisect_right(steps, after)
        if k < len(steps):
            seq += 1
            heapq.heappush(ticks, (run.ends[steps[k] - 1], i, seq, steps[k], run))

    def sync_ticks(t: float, inclusive: bool) -> None:
        """Bring KV usage of engines inside a run up to time ``t``, as their steps' scrapes would;
        ``inclusive``: a step ending exactly at ``t`` has been seen (heap events at ``t`` ran)."""
        while ticks:
            tick_t, i, _, step, run = ticks[0]
            if tick_t > t or (tick_t == t and not inclusive):
                return
            heapq.heappop(ticks)
            if runs[i] is run:
                states[i].kv_usage = handles[i].kv_usage_after(run, step)
                # The policy hears of it as of a scrape (the free-queue index's bound follows).
                pol.on_scrape(states[i])
                push_tick(i, run, step)

    def apply_run(i: int, run: DecodeRun, steps: int) -> None:
        """Apply the run's first ``steps`` steps: to the engine, and to what their outputs did."""
        runs[i] = None
        if steps == 0:
            return
        handles[i].advance(run, steps)
        ends = run.ends if steps == run.num_steps else run.ends[:steps]
        last = ends[-1]
        for s in run.seqs:  # no first token and no completion inside a run
            lv = live[s.request_id]
            lv.out += steps
            lv.last = last
        itl.add_steps(run.start, ends, len(run.seqs))
        rep = reports[i]
        rep.steps += steps
        rep.busy_time += last - run.start

    def run_done(i: int, t: float, run: DecodeRun) -> None:
        apply_run(i, run, run.num_steps)
        scrape(i, t)
        start_step(i, t)

    def cut_run(i: int, t: float, inclusive: bool) -> None:
        """A request arrives at engine ``i`` mid-run: apply the steps done, and make the step in
        progress an ordinary one, so that the request joins the step after it."""
        run = runs[i]
        assert run is not None
        started = run.steps_started_by(t, inclusive)
        apply_run(i, run, started - 1)
        begun = run.ends[started - 2] if started > 1 else run.start
        scrape(i, begun)
        start_step(i, begun, allow_run=False)

    def dispatch(req: WorkloadRequest, t: float, inclusive: bool) -> None:
        facts = build(req)
        if ticks:
            sync_ticks(t, inclusive)
        decision = choose(facts, states, t)
        st = decision.endpoint
        i = index[st.id]
        prefill = getattr(decision, "prefill_tokens", None) or len(req.prompt)
        st.begin(prefill)
        pol.on_dispatch(facts, st, t)
        live[req.request_id] = _Live(req, facts, st, i, t, prefill, last=t)
        reports[i].requests += 1
        if runs[i] is not None:
            cut_run(i, t, inclusive)
        shared = None
        if hash_block_size is not None and facts.block_hashes is not None:
            shared = (hash_block_size, facts.block_hashes)
        try:
            handles[i].add(req, t, shared)
        except RequestError as exc:
            complete(live[req.request_id], t, False, str(exc))
            return
        if not busy[i]:
            start_step(i, t)

    def complete(lv: _Live, t: float, ok: bool, error: str) -> None:
        req = lv.req
        del live[req.request_id]
        records.append(
            RequestRecord(
                request_id=req.request_id,
                start=lv.start,
                end=t,
                first_token=lv.first,
                prompt_tokens=len(req.prompt),
                output_tokens=lv.out,
                endpoint=lv.state.id,
                cached_tokens=lv.cached,
                ok=ok,
                error=error,
            )
        )
        lv.state.end(lv.prefill, prefill_done=lv.first is not None)
        ttft = None if lv.first is None else lv.first - lv.start
        pol.on_complete(lv.facts, lv.state, t, ttft, ok, output_tokens=lv.out)
        finished[req.request_id] = t
        for child in children.pop(req.request_id, ()):
            push_dispatch(max(child.arrival, t + child.think_time), child)
        if progress is not None and len(records) % 1000 == 0:
            progress(len(records))

    def scrape(i: int, t: float) -> None:
        if t - last_scrape[i] >= scrape_interval:
            handles[i].refresh(states[i])
            pol.on_scrape(states[i])
            last_scrape[i] = t
            rep = reports[i]
            rep.peak_running = max(rep.peak_running, states[i].running)
            rep.peak_waiting = max(rep.peak_waiting, states[i].waiting)

    def step_done(i: int, t: float) -> None:
        gaps: dict[float, int] = {}
        for out in pending_out[i]:  # type: ignore[union-attr]
            lv = live.get(out.request_id)
            if lv is None:
                continue
            n = len(out.new_token_ids)
            if n:
                if lv.first is None:
                    lv.first = t
                    lv.cached = out.num_cached_tokens
                    lv.state.first_token(lv.prefill)
                    n_gaps = n - 1
                else:
                    n_gaps = n
                if n_gaps:
                    gap = (t - lv.last) / n if n > 1 else t - lv.last
                    gaps[gap] = gaps.get(gap, 0) + n_gaps
                lv.out += n
                lv.last = t
            if out.finished:
                aborted = out.finish_reason == "abort"
                complete(lv, t, not aborted, "aborted by the engine" if aborted else "")
        for gap, count in gaps.items():
            itl.add(gap, count)
        pending_out[i] = None
        scrape(i, t)
        if handles[i].has_work():
            start_step(i, t)
        else:
            busy[i] = False

    def sample_load(t: float) -> None:
        """Record in-flight counts at each sampling instant before ``t`` (they change only at
        dispatches and completions, so this does not depend on how finely steps are evented)."""
        nonlocal next_sample
        while next_sample < t:
            load_series.append((next_sample, [st.in_flight for st in states]))
            next_sample += load_sample_interval

    it = iter(workload)
    nxt = next(it, None)
    while True:
        t_heap = heap[0][0] if heap else float("inf")
        if nxt is not None and nxt.arrival <= t_heap:
            req, nxt = nxt, next(it, None)
            now = max(now, req.arrival)
            if load_sample_interval > 0:
                sample_load(now)
            events += 1
            parent = req.depends_on
            if parent is None:
                dispatch(req, now, False)
            elif parent in finished:
                push_dispatch(max(now, finished[parent] + req.think_time), req)
            else:
                children.setdefault(parent, []).append(req)
        elif heap:
            t, _, key, _, kind, payload = heapq.heappop(heap)
            if kind == _RUN and runs[key] is not payload:
                continue  # a run cut short by an arrival; its steps were applied then
            now = t
            if load_sample_interval > 0:
                sample_load(now)
            events += 1
            if kind == _STEP:
                step_done(key, t)
            elif kind == _RUN:
                run_done(key, t, payload)  # type: ignore[arg-type]
            else:
                dispatch(payload, t, True)  # type: ignore[arg-type]
        else:
            break

    for h, rep in zip(handles, reports, strict=True):
        rep.prefix_queries, rep.prefix_hits = h.prefix_counters()
    for lv in list(live.values()):  # requests an engine never finished (should not happen)
        complete(lv, now, False, "unfinished at end of simulation")
    return RunResult(
        policy=getattr(pol, "name", type(pol).__name__),
        records=records,
        itl=itl,
        engines=reports,
        sim_time=now,
        wall_time=time.perf_counter() - wall0,
        cpu_time=time.process_time() - cpu0,
        events=events,
        load_series=load_series,
    )
