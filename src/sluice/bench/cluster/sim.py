"""Discrete-event cluster simulator: N simulated engines, the gateway's own routing policies.

Virtual time, no HTTP. One event heap holds engine step completions and deferred dispatches;
workload arrivals are pulled lazily from the (arrival-ordered) workload. On arrival the request is
routed with the *same* ``Policy`` object the gateway uses, against the same ``EndpointState``
bookkeeping (``begin`` / ``first_token`` / ``end``, ``on_dispatch`` / ``on_complete``); the
engine-reported fields (running, waiting, KV usage) are refreshed from each engine after its steps,
at most every ``scrape_interval`` simulated seconds, to mimic the gateway's scrape staleness.

An engine steps whenever it has work: ``step()`` picks the batch and its duration ``d`` at time
``t``; its outputs (first tokens, next tokens, completions) take effect at ``t + d``.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sluice.bench.cluster.engines import EngineHandle, make_engines
from sluice.bench.cluster.result import EngineReport, RunResult
from sluice.bench.metrics import LogHistogram, RequestRecord
from sluice.bench.workloads.base import WorkloadRequest
from sluice.routing.endpoint import Endpoint, EndpointState
from sluice.routing.facts import RequestFacts
from sluice.routing.policy import Policy, make_policy
from sluice.sim.request import RequestError

FactsBuilder = Callable[[WorkloadRequest], RequestFacts]

_STEP = 0
_DISPATCH = 1
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
) -> RunResult:
    """Run ``workload`` through ``engines`` simulated engines routed by ``policy``.

    ``engine_config`` is a ``sluice.sim.engine.EngineConfig`` (default: the simulator's default);
    ``engine_factory(i)`` overrides it (e.g. heterogeneous fleets). ``facts_builder`` turns a
    workload request into ``RequestFacts`` (add block hashes for prefix-aware policies).
    """
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
    reports = [EngineReport(st.id) for st in states]

    heap: list[tuple[float, int, int, object]] = []
    seq = 0
    pending_out: list[object] = [None] * engines
    busy = [False] * engines
    last_scrape = [0.0] * engines
    live: dict[str, _Live] = {}
    children: dict[str, list[WorkloadRequest]] = {}
    finished: dict[str, float] = {}
    records: list[RequestRecord] = []
    itl = LogHistogram()
    load_series: list[tuple[float, list[int]]] = []
    next_sample = 0.0
    events = 0
    now = 0.0

    def start_step(i: int, t: float) -> None:
        nonlocal seq
        duration, outputs = handles[i].step(t)
        if duration <= 0 and not outputs:
            if not handles[i].has_work():
                busy[i] = False
                return
            duration = _EMPTY_STEP_WAIT  # nothing schedulable yet (e.g. no free KV blocks)
        busy[i] = True
        pending_out[i] = outputs
        rep = reports[i]
        rep.steps += 1
        rep.busy_time += duration
        seq += 1
        heapq.heappush(heap, (t + duration, seq, _STEP, i))

    def dispatch(req: WorkloadRequest, t: float) -> None:
        facts = build(req)
        decision = pol.pick(facts, states, t)
        st = decision.endpoint
        i = index[st.id]
        prefill = getattr(decision, "prefill_tokens", None) or len(req.prompt)
        st.begin(prefill)
        pol.on_dispatch(facts, st, t)
        live[req.request_id] = _Live(req, facts, st, i, t, prefill, last=t)
        reports[i].requests += 1
        try:
            handles[i].add(req, t)
        except RequestError as exc:
            complete(live[req.request_id], t, False, str(exc))
            return
        if not busy[i]:
            start_step(i, t)

    def complete(lv: _Live, t: float, ok: bool, error: str) -> None:
        nonlocal seq
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
        pol.on_complete(lv.facts, lv.state, t, ttft, ok)
        finished[req.request_id] = t
        for child in children.pop(req.request_id, ()):
            seq += 1
            heapq.heappush(heap, (max(child.arrival, t + child.think_time), seq, _DISPATCH, child))
        if progress is not None and len(records) % 1000 == 0:
            progress(len(records))

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
        h = handles[i]
        if t - last_scrape[i] >= scrape_interval:
            h.refresh(states[i])
            last_scrape[i] = t
            rep = reports[i]
            rep.peak_running = max(rep.peak_running, states[i].running)
            rep.peak_waiting = max(rep.peak_waiting, states[i].waiting)
        if h.has_work():
            start_step(i, t)
        else:
            busy[i] = False

    it = iter(workload)
    nxt = next(it, None)
    while True:
        t_heap = heap[0][0] if heap else float("inf")
        if nxt is not None and nxt.arrival <= t_heap:
            req, nxt = nxt, next(it, None)
            now = max(now, req.arrival)
            events += 1
            parent = req.depends_on
            if parent is None:
                dispatch(req, now)
            elif parent in finished:
                t = max(now, finished[parent] + req.think_time)
                seq += 1
                heapq.heappush(heap, (t, seq, _DISPATCH, req))
            else:
                children.setdefault(parent, []).append(req)
        elif heap:
            t, _, kind, payload = heapq.heappop(heap)
            now = t
            events += 1
            if kind == _STEP:
                step_done(payload, t)  # type: ignore[arg-type]
            else:
                dispatch(payload, t)  # type: ignore[arg-type]
        else:
            break
        if load_sample_interval > 0 and now >= next_sample:
            load_series.append((now, [st.in_flight for st in states]))
            next_sample = now + load_sample_interval

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
