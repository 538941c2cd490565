"""What goes into the engine and what comes out of it: plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field


class RequestError(ValueError):
    """The engine refuses a request, with the message vLLM would answer (HTTP 400)."""


@dataclass(slots=True)
class SamplingParams:
    """vLLM's sampling parameters. Only the length controls steer the simulation; the others are
    accepted and kept so that callers can pass real requests through unchanged."""

    max_tokens: int = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    n: int = 1


@dataclass(slots=True)
class SimRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    lora_name: str | None = None
    priority: int = 0
    arrival_time: float | None = None  # simulated seconds; None means "now"


@dataclass(slots=True)
class RequestTiming:
    """Milestones in simulated seconds; None until reached."""

    arrival: float
    first_scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort"
    num_prompt_tokens: int
    num_cached_tokens: int  # prefix-cache hit tokens at first scheduling
    timing: RequestTiming
    num_output_tokens: int = 0  # generated so far, this step's tokens included


@dataclass(slots=True)
class StepOutput:
    duration: float
    outputs: list[RequestOutput]
    num_scheduled_tokens: int = 0
    num_batched_requests: int = 0


FINISH_REASONS = ("stop", "length", "abort")


@dataclass(slots=True)
class EngineStats:
    """vLLM's engine counters (monotonic) and gauges (as of the last step)."""

    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    prefix_cache_queries_total: int = 0  # tokens
    prefix_cache_hits_total: int = 0  # tokens
    num_preemptions_total: int = 0
    request_success_total: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0)
    )
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    steps_total: int = 0
    busy_time_total: float = 0.0  # simulated seconds spent in steps
