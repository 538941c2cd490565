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

from sluice.sim.block_pool import BlockPool
from sluice.sim.kv_events import KVEvent
from sluice.sim.latency import LatencyModel
from sluice.sim.output import OutputPlanner
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

    # -- requests -----------------------------------------------------------------------------

    def add_request(self, request: SimRequest) -> None:
        sampling = request.sampling
        prompt_len = len(request.prompt_token_ids)
        self._validate(request.request_id, prompt_len, sampling)
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

    def abort(self, request_id: str) -> None:
        """Stop a request now and free its blocks; its final output comes with the next step."""
        seq = self._requests.pop(request_id, None)
        if seq is None:
            return
        self.scheduler.release(seq)
        seq.finish_reason = "abort"
        seq.timing.finished = self.now
        self.stats.request_success_total["abort"] += 1
        self._aborted.append(self._output(seq, []))
        self._refresh_gauges()

    def has_unfinished(self) -> bool:
        return bool(self._requests)

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
        start = self.now
        self._admit_ready()
        batch = self.scheduler.schedule(self.now)
        if not batch.seqs and self._pending and not self.scheduler.has_work():
            self.now = max(self.now, self._pending[0][0])  # idle until the front-end hands over
            self._admit_ready()
            batch = self.scheduler.schedule(self.now)
        outputs, self._aborted = self._aborted, []
        if not batch.seqs:
            self._flush_events()
            return StepOutput(self.now - start, outputs)
        busy = self.latency.step_time(batch.num_tokens, batch.context_tokens, batch.attention_work)
        self.now += busy
        stats = self.stats
        stats.steps_total += 1
        stats.busy_time_total += busy
        self._postprocess(batch.seqs, outputs)
        self._flush_events()
        self._refresh_gauges()
        return StepOutput(self.now - start, outputs, batch.num_tokens, len(batch.seqs))

    def _admit_ready(self) -> None:
        pending = self._pending
        now = self.now
        while pending and pending[0][0] <= now:
            seq = heapq.heappop(pending)[2]
            if seq.status is Status.PENDING:
                self.scheduler.add(seq)

    def _postprocess(self, seqs: list[Sequence], outputs: list[RequestOutput]) -> None:
        """Commit the step's computation and sample one token for each request it completes."""
        now = self.now
        stats = self.stats
        planner = self.planner
        hashing = self._hashing
        eos = self.tokenizer.eos_token_id
        finished: list[Sequence] = []
        for seq in seqs:
            seq.num_computed_tokens += seq.num_scheduled
            if seq.num_computed_tokens < len(seq.token_ids):
                continue  # a prefill chunk that is not the last: no token yet
            plan = seq.plan
            index = seq.num_output_tokens
            last = index + 1 >= plan.length
            token = eos if last and plan.eos_last else planner.token(plan.filler_base, index)
            seq.append_token(token, hashing)  # type: ignore[arg-type]
            if index == 0:
                seq.timing.first_token = now
                stats.prompt_tokens_total += seq.num_prompt_tokens
            stats.generation_tokens_total += 1
            reason = plan.reason if last else self._early_finish(seq, token)  # type: ignore[arg-type]
            if reason is not None:
                seq.finish_reason = reason
                seq.timing.finished = now
                stats.request_success_total[reason] += 1
                finished.append(seq)
                del self._requests[seq.request_id]
            outputs.append(self._output(seq, [token]))  # type: ignore[list-item]
        if finished:
            self.scheduler.release_finished(finished)

    def _early_finish(self, seq: Sequence, token: int) -> str | None:
        """Finish reasons other than the plan's: context full, stop token, stop string."""
        if len(seq.token_ids) >= self._max_model_len:
            return "length"
        sampling = seq.sampling
        if sampling.stop_token_ids and token in sampling.stop_token_ids:
            return "stop"
        if sampling.stop:
            text = seq.stop_text + " " + self.tokenizer.decode([token])
            seq.stop_text = text
            if any(s in text for s in sampling.stop):
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
