"""The simulated vLLM engine: a pure state machine on a virtual clock.

``step()`` schedules one batch at ``now`` (``scheduler.py``), prices it with the roofline model
(``latency.py``), advances ``now`` by that duration and returns what each request generated. No
I/O, no wall clock: the HTTP server runs it in (optionally dilated) real time, the cluster
simulator as fast as it can.

A request first spends ``api_overhead_s`` in the front-end (HTTP parsing, chat template,
tokenization) before the scheduler sees it; if only such requests remain, ``step()`` idles the
clock forward to the first one, and the returned ``duration`` includes that idle time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from math import inf

from sluice.sim.block_pool import BlockPool
from sluice.sim.decode_run import ALLOCATE, DecodeRun, allocations, block_ops
from sluice.sim.kv_events import KVEvent
from sluice.sim.latency import LatencyModel
from sluice.sim.output import FILLER_STEP, OutputPlanner
from sluice.sim.profiles import Calibration, get_gpu, get_model, num_gpu_blocks_for
from sluice.sim.request import (
    EngineStats,
    RequestError,
    RequestOutput,
    RequestTiming,
    SamplingParams,
    SimRequest,
    StepOutput,
)
from sluice.sim.scheduler import Scheduler
from sluice.sim.sequence import Sequence, Status
from sluice.sim.tokenizer import Tokenizer, WordTokenizer

__all__ = [
    "DecodeRun",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "RequestError",
    "RequestOutput",
    "RequestTiming",
    "SamplingParams",
    "SimRequest",
    "StepOutput",
]


@dataclass
class EngineConfig:
    gpu: str = "h100"
    model: str = "llama-3.1-8b"
    tensor_parallel: int = 1
    block_size: int = 16
    num_gpu_blocks: int | None = None  # None: derived from the profile like vLLM's profiler
    max_num_seqs: int | None = None  # None: vLLM's defaults for the GPU
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None  # None: the model's context, capped by the KV capacity
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"  # or "priority"
    served_model_name: str | None = None
    max_loras: int | None = None  # adapters per batch (vLLM's --max-loras); None: no limit
    seed: int = 0
    api_overhead_s: float | None = None  # None: the calibration's front-end time
    calibration: Calibration = field(default_factory=Calibration)

    def resolved(self) -> EngineConfig:
        """A copy with every None filled in, validated."""
        gpu = get_gpu(self.gpu)
        model = get_model(self.model)
        if self.tensor_parallel < 1 or model.num_kv_heads % self.tensor_parallel:
            raise ValueError(
                f"tensor_parallel={self.tensor_parallel} must divide the {model.num_kv_heads} "
                f"KV heads of {model.name}"
            )
        if not 1 <= self.block_size <= 256:
            raise ValueError("block_size must be between 1 and 256")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError(
                f"unknown scheduling policy {self.scheduling_policy!r}; known: fcfs, priority"
            )
        blocks = self.num_gpu_blocks or num_gpu_blocks_for(
            gpu,
            model,
            self.tensor_parallel,
            self.block_size,
            self.gpu_memory_utilization,
            self.calibration,
        )
        big = gpu.large_batch_defaults
        capacity = (blocks - 1) * self.block_size
        max_len = self.max_model_len or min(model.max_context, capacity)
        if max_len > capacity:
            raise ValueError(
                f"The model's max seq len ({max_len}) is larger than the maximum number of "
                f"tokens that can be stored in KV cache ({capacity}). Try increasing "
                "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the "
                "engine."
            )
        return replace(
            self,
            gpu=gpu.name,
            model=model.name,
            num_gpu_blocks=blocks,
            max_num_seqs=self.max_num_seqs or (1024 if big else 256),
            max_num_batched_tokens=self.max_num_batched_tokens or (8192 if big else 2048),
            max_model_len=max_len,
            served_model_name=self.served_model_name or model.hf_name,
            api_overhead_s=(
                self.calibration.api_overhead
                if self.api_overhead_s is None
                else self.api_overhead_s
            ),
        )


class Engine:
    """One simulated vLLM engine.

    ``kv_event_sink`` receives each step's KV events (only when prefix caching is on);
    ``tokenizer`` decides which ids simulated output is made of and what EOS is
    (default: ``WordTokenizer``).
    """

    def __init__(
        self,
        config: EngineConfig,
        kv_event_sink: Callable[[list[KVEvent]], None] | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.config = cfg = config.resolved()
        self.now = 0.0
        self.stats = EngineStats()
        self.tokenizer = tokenizer or WordTokenizer()
        self.kv_event_sink = kv_event_sink
        self.pool = BlockPool(cfg.num_gpu_blocks, cfg.block_size, cfg.enable_prefix_caching)  # type: ignore[arg-type]
        self.pool.record_events = kv_event_sink is not None and cfg.enable_prefix_caching
        self.scheduler = Scheduler(
            self.pool,
            self.stats,
            cfg.max_num_seqs,  # type: ignore[arg-type]
            cfg.max_num_batched_tokens,  # type: ignore[arg-type]
            cfg.scheduling_policy,
            cfg.max_loras,
        )
        self.latency = LatencyModel(
            get_gpu(cfg.gpu), get_model(cfg.model), cfg.tensor_parallel, cfg.calibration
        )
        self.planner = OutputPlanner(
            cfg.seed, self.tokenizer.filler_token_ids(), self.tokenizer.eos_token_id
        )
        self._requests: dict[str, Sequence] = {}
        self._pending: list[tuple[float, int, Sequence]] = []  # (ready_time, order, seq)
        self._arrivals = 0
        self._aborted: list[RequestOutput] = []
        self._max_model_len: int = cfg.max_model_len  # type: ignore[assignment]
        self._hashing = cfg.enable_prefix_caching
        # Σ computed tokens of the running requests when all of them decode next (see step()).
        self._decode_context: int | None = None
        self.fast_decode = True  # the fused decode path; off only to check it against the other

    # -- requests -----------------------------------------------------------------------------

    def add_request(
        self,
        request: SimRequest,
        check_ids: bool = True,
        block_hashes: list[int] | None = None,
    ) -> None:
        """Queue a request (``RequestError`` if vLLM would refuse it). ``check_ids=False`` skips
        the vocabulary check, a scan of the whole prompt, for callers whose ids are in range by
        construction (the cluster simulator's workloads). ``block_hashes``: the prompt's full
        block hashes when the caller already has them exactly as this engine computes them
        (``block_hash.hash_token_blocks`` with its block size, LoRA and seed), e.g. a router's
        (``sluice.routing.hashing``, equal for seed 0 and no LoRA); they are trusted."""
        sampling = request.sampling
        prompt_len = len(request.prompt_token_ids)
        self._validate(request.request_id, prompt_len, sampling)
        if check_ids:
            self._validate_ids(request.prompt_token_ids)
        arrival = self.now if request.arrival_time is None else request.arrival_time
        plan = self.planner.plan(
            request.request_id, sampling.max_tokens, sampling.min_tokens, sampling.ignore_eos
        )
        self._arrivals += 1
        seq = Sequence(
            request.request_id,
            request.prompt_token_ids,
            sampling,
            plan,
            RequestTiming(arrival),
            arrival + self.config.api_overhead_s,  # type: ignore[operator]
            self._arrivals,
            self.config.block_size,
            request.lora_name,
            request.priority,
            self.config.seed,
            self._hashing,
            block_hashes,
        )
        self._requests[request.request_id] = seq
        heapq.heappush(self._pending, (seq.ready_time, seq.arrival_order, seq))
        self._refresh_gauges()

    def _validate(self, request_id: str, prompt_len: int, sampling: SamplingParams) -> None:
        if request_id in self._requests:
            raise RequestError(f"Request id {request_id} already running.")
        if prompt_len == 0:
            raise RequestError("The decoder prompt cannot be empty")
        if sampling.max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {sampling.max_tokens}.")
        if sampling.min_tokens < 0 or sampling.min_tokens > sampling.max_tokens:
            raise RequestError(
                f"min_tokens must be in [0, max_tokens={sampling.max_tokens}], "
                f"got {sampling.min_tokens}."
            )
        limit = self._max_model_len
        if prompt_len + sampling.max_tokens > limit:
            raise RequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + sampling.max_tokens} tokens ({prompt_len} in the messages, "
                f"{sampling.max_tokens} in the completion). Please reduce the length of the "
                "messages or completion."
            )

    def _validate_ids(self, ids: list[int]) -> None:
        low, high = min(ids), max(ids)
        if low < 0 or high >= self.tokenizer.vocab_size:
            bad = low if low < 0 else high
            raise RequestError(f"Token id {bad} is out of vocabulary")

    def abort(self, request_id: str) -> None:
        """Stop a request now and free its blocks; its final output comes with the next step."""
        seq = self._requests.pop(request_id, None)
        if seq is None:
            return
        self.scheduler.release(seq)
        self._decode_context = None  # recounted by the next (general) step
        seq.finish_reason = "abort"
        seq.timing.finished = self.now
        self.stats.request_success_total["abort"] += 1
        self._aborted.append(self._output(seq, []))
        self._refresh_gauges()

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_gpu_blocks(self) -> int:
        """KV blocks of this engine (``vllm:cache_config_info``), as resolved from the profile."""
        return self.pool.num_blocks

    @property
    def block_size(self) -> int:
        return self.pool.block_size

    def advance_to(self, t: float) -> None:
        """Move the clock forward to ``t`` (idle time); never backwards."""
        if t > self.now:
            self.now = t

    def reset_prefix_cache(self) -> bool:
        """Forget all cached blocks (only when no request holds any, as in vLLM)."""
        done = self.pool.reset_prefix_cache()
        self._flush_events()
        return done

    # -- the step -----------------------------------------------------------------------------

    def step(self) -> StepOutput:
        """Run one engine step at ``now`` and advance the clock by its duration.

        Returns one output per request that generated a token (plus final outputs of requests
        aborted since the last step). With no work at all: ``StepOutput(0.0, [])``.
        """
        start = self.now
        self._admit_ready()
        sched = self.scheduler
        running = sched.running
        context = self._decode_context
        if (
            context is not None
            and self.fast_decode
            and running
            and not len(sched.waiting)
            and len(running) <= sched.max_num_batched_tokens
            and len(running) <= self.pool.free_queue.num_free
        ):
            return self._step_decodes(start, context)
        batch = sched.schedule(self.now)
        if not batch.seqs and self._pending and not sched.has_work():
            self.now = max(self.now, self._pending[0][0])  # idle until the front-end hands over
            self._admit_ready()
            batch = sched.schedule(self.now)
        outputs, self._aborted = self._aborted, []
        if not batch.seqs:
            # Scheduling may still have preempted or aborted (blocks freed): gauges must follow.
            self._flush_events()
            self._refresh_gauges()
            return StepOutput(self.now - start, outputs)
        busy = self.latency.step_time(batch.num_tokens, batch.context_tokens, batch.attention_work)
        return self._finish_step(start, busy, batch.seqs, outputs, batch.num_tokens, False)

    def _step_decodes(self, start: float, context: int) -> StepOutput:
        """The steady state, fused: every running request decodes one token.

        The scheduler would give each running request one token and, with no one waiting and at
        least one free block per request, could neither preempt nor admit; so the step's cost is
        known up front from ``context`` (Σ computed tokens, kept by the previous step) and one
        pass over ``running`` both schedules and samples. Results are identical to the general
        path (tests/sim/test_engine.py checks it), only cheaper.
        """
        n = len(self.scheduler.running)
        busy = self.latency.step_time(n, context + n, (2 * context + n) * 0.5)
        outputs, self._aborted = self._aborted, []
        return self._finish_step(start, busy, self.scheduler.running, outputs, n, True)

    def _finish_step(
        self,
        start: float,
        busy: float,
        seqs: list[Sequence],
        outputs: list[RequestOutput],
        num_tokens: int,
        schedule_inline: bool,
    ) -> StepOutput:
        self.now += busy
        stats = self.stats
        stats.steps_total += 1
        stats.busy_time_total += busy
        num_seqs = len(seqs)
        self._decode_context = self._postprocess(seqs, outputs, schedule_inline)
        self._flush_events()
        self._refresh_gauges()
        return StepOutput(self.now - start, outputs, num_tokens, num_seqs)

    # -- fast-forward over pure decode (decode_run.py) -----------------------------------------

    def plan_decode_run(self) -> DecodeRun | None:
        """The pure-decode steps ahead, when there are at least two; changes nothing.

        They are the steps the fused decode path would take before the first of: a request
        producing its last token (that step is not part of the run), a pending request becoming
        ready, or free blocks falling short of one per request (which could preempt).
        """
        context = self._decode_context
        sched = self.scheduler
        running = sched.running
        if (
            context is None
            or not self.fast_decode
            or not running
            or len(sched.waiting)
            or self._aborted
            or len(running) > sched.max_num_batched_tokens
        ):
            return None
        steps = 1 << 62
        for seq in running:
            if seq.slow_checks:
                return None  # stop strings: where it ends is only known token by token
            steps = min(steps, seq.output_limit - seq.num_output_tokens - 1)
        if steps < 2:
            return None
        n = len(running)
        bs = self.config.block_size
        free = self.pool.free_queue.num_free
        steps = _steps_within_blocks(running, steps, free - n, bs)
        until = self._pending[0][0] if self._pending else inf
        ends, busy = self.latency.decode_ends(self.now, n, context, steps, until)
        if len(ends) < 2:
            return None
        seqs = list(running)
        return DecodeRun(seqs, self.now, context, ends, busy, block_ops(seqs, len(ends), bs), free)

    def advance_decode_run(self, run: DecodeRun, steps: int) -> None:
        """Apply the first ``steps`` steps of ``run``, planned from the current state, at once.

        The same tokens, blocks, cache entries, stats and clock as ``steps`` calls of ``step()``;
        KV events reach the sink as one batch.
        """
        sched = self.scheduler
        seqs = run.seqs
        filler_start = self.planner.filler_start
        filler_span = self.planner.filler_span
        for seq in seqs:
            base = seq.filler_base
            first = seq.num_output_tokens
            seq.extend_output(
                [
                    filler_start + (base + i * FILLER_STEP) % filler_span
                    for i in range(first, first + steps)
                ],
                self._hashing,
            )
            seq.num_output_tokens = first + steps
        for j, pos, kind in run.ops:
            if j > steps:
                break
            seq = seqs[pos]
            if kind == ALLOCATE:
                sched.grow(seq, 1)
            else:  # a decode step fills one block at a time
                sched.cache(seq, seq.num_cached_blocks + 1)
        for seq in seqs:
            seq.num_computed_tokens = seq.num_tokens - 1  # the newest token is computed next
        stats = self.stats
        stats.steps_total += steps
        busy_total = stats.busy_time_total
        for busy in run.busy[:steps]:  # one by one, as stepping adds them
            busy_total += busy
        stats.busy_time_total = busy_total
        stats.generation_tokens_total += len(seqs) * steps
        self.now = run.ends[steps - 1]
        self._decode_context = run.context + len(seqs) * steps
        self._flush_events()
        self._refresh_gauges()

    def _admit_ready(self) -> None:
        pending = self._pending
        now = self.now
        while pending and pending[0][0] <= now:
            seq = heapq.heappop(pending)[2]
            if seq.status is Status.PENDING:
                self.scheduler.add(seq)

    def _postprocess(
        self, seqs: list[Sequence], outputs: list[RequestOutput], schedule_inline: bool
    ) -> int | None:
        """Commit the step's computation and sample one token for each request it completes.

        With ``schedule_inline`` (the fused decode path) each request is also scheduled here:
        one token, a new block when the last one is full, caching of a block it fills.
        Returns Σ computed tokens over running requests when every one of them will be a pure
        decode in the next step (what ``_step_decodes`` needs), else None.

        The hot loop of the simulator: everything a decode step touches is a slot read here.
        """
        now = self.now
        stats = self.stats
        sched = self.scheduler
        hashing = self._hashing
        bs = self.config.block_size
        eos = self.tokenizer.eos_token_id
        filler_start = self.planner.filler_start
        filler_span = self.planner.filler_span
        step = FILLER_STEP
        emit = outputs.append
        output = RequestOutput  # a local: this is the hot loop
        already = len(outputs)
        finished: list[Sequence] = []
        context = 0
        all_decode = True
        for seq in seqs:
            if schedule_inline:
                computed = seq.num_computed_tokens = seq.num_tokens
                if computed > seq.capacity:
                    sched.grow(seq, 1)
                if computed >= seq.next_cache_at:
                    sched.cache(seq, computed // bs)
            else:
                computed = seq.num_computed_tokens
                if computed < seq.num_tokens:
                    all_decode = False
                    continue  # a prefill chunk that is not the last: no token yet
            index = seq.num_output_tokens
            seq.num_output_tokens = count = index + 1
            if count < seq.output_limit:
                token = filler_start + (seq.filler_base + index * step) % filler_span
                reason = self._stop_hit(seq, token) if seq.slow_checks else None
            else:
                token = filler_start + (seq.filler_base + index * step) % filler_span
                if seq.eos_last:
                    token = eos
                reason = seq.plan.reason
            seq.token_ids.append(token)  # type: ignore[arg-type]
            seq.num_tokens = computed + 1
            if hashing and (computed + 1) % bs == 0:
                seq.hash_last_block()
            if index == 0:
                seq.timing.first_token = now
                stats.prompt_tokens_total += seq.num_prompt_tokens
            if reason is None:
                context += computed
            else:
                seq.finish_reason = reason
                seq.timing.finished = now
                stats.request_success_total[reason] += 1
                finished.append(seq)
                del self._requests[seq.request_id]
            emit(
                output(
                    seq.request_id,
                    [token],  # type: ignore[list-item]
                    reason is not None,
                    reason,
                    seq.num_prompt_tokens,
                    seq.num_cached_tokens,
                    seq.timing,
                    count,
                )
            )
        stats.generation_tokens_total += len(outputs) - already
        if finished:
            sched.release_finished(finished)
        if all_decode and len(outputs) - already - len(finished) == len(sched.running):
            return context
        return None

    def _stop_hit(self, seq: Sequence, token: int) -> str | None:
        """ "stop" when the token is a stop token or completes a stop string."""
        sampling = seq.sampling
        if token in sampling.stop_token_ids:
            return "stop"
        if sampling.stop:
            text = seq.stop_text + " " + self.tokenizer.decode([token])
            # Keep only a tail long enough to hold any stop string across the newest boundary.
            seq.stop_text = text[-(max(map(len, sampling.stop)) + 64) :]
            if any(stop in text for stop in sampling.stop):
                return "stop"
        return None

    def _output(self, seq: Sequence, new_tokens: list[int]) -> RequestOutput:
        return RequestOutput(
            seq.request_id,
            new_tokens,
            seq.finish_reason is not None,
            seq.finish_reason,
            seq.num_prompt_tokens,
            seq.num_cached_tokens,
            seq.timing,
            seq.num_output_tokens,
        )

    def _flush_events(self) -> None:
        if self.pool.events and self.kv_event_sink is not None:
            self.kv_event_sink(self.pool.drain_events())

    def _refresh_gauges(self) -> None:
        stats = self.stats
        stats.num_running = len(self.scheduler.running)
        stats.num_waiting = len(self._requests) - stats.num_running
        stats.kv_cache_usage = self.pool.usage()


def _steps_within_blocks(seqs: list[Sequence], steps: int, spare: int, block_size: int) -> int:
    """The most steps (at most ``steps``) such that before each one at least one free block per
    request is left: the allocations of all but the last step fit in ``spare``."""
    if allocations(seqs, steps - 1, block_size) <= spare:
        return steps
    low, high = 0, steps - 1  # allocations(low - 1) fits; allocations(high) does not
    while low < high:
        mid = (low + high + 1) // 2
        if allocations(seqs, mid - 1, block_size) <= spare:
            low = mid
        else:
            high = mid - 1
    return low
