"""One request inside the engine: its tokens, KV blocks, progress and plan."""

from __future__ import annotations

from enum import IntEnum

from sluice.sim.block_hash import hash_block, hash_token_blocks, root_hash
from sluice.sim.block_pool import KVBlock
from sluice.sim.output import OutputPlan
from sluice.sim.request import RequestTiming, SamplingParams


class Status(IntEnum):
    PENDING = 0  # arrived, still in the API front-end (not yet schedulable)
    WAITING = 1
    RUNNING = 2
    FINISHED = 3


class Sequence:
    """Mutable per-request state. ``token_ids`` holds prompt then output tokens; the KV cache
    covers the first ``num_computed_tokens`` of them (the newest sampled token is computed by the
    next step, as in vLLM)."""

    __slots__ = (
        "arrival_order",
        "block_hashes",
        "block_size",
        "block_table",
        "finish_reason",
        "lora_name",
        "num_cached_blocks",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_output_tokens",
        "num_prompt_tokens",
        "num_scheduled",
        "plan",
        "priority",
        "ready_time",
        "request_id",
        "root_hash",
        "sampling",
        "status",
        "stop_text",
        "timing",
        "token_ids",
        "was_preempted",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        plan: OutputPlan,
        timing: RequestTiming,
        ready_time: float,
        arrival_order: int,
        block_size: int,
        lora_name: str | None = None,
        priority: int = 0,
        hash_seed: int = 0,
        hashing: bool = True,
    ) -> None:
        self.request_id = request_id
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_output_tokens = 0
        self.sampling = sampling
        self.plan = plan
        self.timing = timing
        self.ready_time = ready_time
        self.arrival_order = arrival_order
        self.block_size = block_size
        self.lora_name = lora_name
        self.priority = priority
        self.status = Status.PENDING
        self.finish_reason: str | None = None
        self.num_computed_tokens = 0
        self.num_scheduled = 0
        self.num_cached_tokens = 0
        self.block_table: list[KVBlock] = []
        self.num_cached_blocks = 0  # leading blocks of block_table registered in the cache
        self.was_preempted = False
        self.stop_text = ""  # decoded output so far; kept only when stop strings are set
        # Hashes of every full block of token_ids, extended as output tokens fill blocks.
        self.block_hashes: list[int] = (
            hash_token_blocks(prompt_token_ids, block_size, lora_name, hash_seed) if hashing else []
        )
        self.root_hash = root_hash(lora_name, hash_seed) if hashing else 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def append_token(self, token_id: int, hashing: bool) -> None:
        """Add a sampled token; hash the block it completes, if any."""
        tokens = self.token_ids
        tokens.append(token_id)
        self.num_output_tokens += 1
        n = len(tokens)
        bs = self.block_size
        if hashing and n % bs == 0:
            parent = self.block_hashes[-1] if self.block_hashes else self.root_hash
            self.block_hashes.append(hash_block(parent, tokens[n - bs : n]))

    def reset_for_recompute(self) -> None:
        """Preempted: KV is gone (blocks freed by the caller); prefill everything again."""
        self.block_table = []
        self.num_cached_blocks = 0
        self.num_computed_tokens = 0
        self.was_preempted = True
