"""One request inside the engine: its tokens, KV blocks, progress and plan."""

from __future__ import annotations

from array import array
from collections.abc import Sequence as Ids
from enum import IntEnum

from sluice.sim.block_hash import hash_block_ids, hash_token_blocks, root_hash
from sluice.sim.block_pool import KVBlock
from sluice.sim.output import OutputPlan
from sluice.sim.request import RequestTiming, SamplingParams

_NEVER = 1 << 62


class Status(IntEnum):
    PENDING = 0  # arrived, still in the API front-end (not yet schedulable)
    WAITING = 1
    RUNNING = 2
    FINISHED = 3


class Sequence:
    """Mutable per-request state. ``token_ids`` holds prompt then output tokens; the KV cache
    covers the first ``num_computed_tokens`` of them (the newest sampled token is computed by the
    next step, as in vLLM). It is an ``array('I')``: copied from an array prompt and hashed
    without one Python int per token."""

    __slots__ = (
        "arrival_order",
        "block_hashes",
        "block_size",
        "block_table",
        "capacity",
        "eos_last",
        "filler_base",
        "finish_reason",
        "lora_name",
        "next_cache_at",
        "num_cached_blocks",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_output_tokens",
        "num_prompt_tokens",
        "num_scheduled",
        "num_tokens",
        "output_limit",
        "plan",
        "priority",
        "ready_time",
        "request_id",
        "root_hash",
        "sampling",
        "slow_checks",
        "status",
        "stop_text",
        "timing",
        "token_ids",
        "was_preempted",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: Ids[int],
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
        block_hashes: list[int] | None = None,
    ) -> None:
        self.request_id = request_id
        self.token_ids = array("I", prompt_token_ids)
        self.num_tokens = self.num_prompt_tokens = len(prompt_token_ids)
        self.num_output_tokens = 0
        self.sampling = sampling
        self.plan = plan
        # The plan, unpacked into slots read on every step.
        self.output_limit = plan.length
        self.eos_last = plan.eos_last
        self.filler_base = plan.filler_base
        self.slow_checks = bool(sampling.stop or sampling.stop_token_ids)
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
        self.capacity = 0  # tokens the block table can hold: len(block_table) * block_size
        self.num_cached_blocks = 0  # leading blocks of block_table registered in the cache
        # Token count at which the next block becomes full and cacheable (never, without caching).
        self.next_cache_at = block_size if hashing else _NEVER
        self.was_preempted = False
        self.stop_text = ""  # decoded output so far; kept only when stop strings are set
        # Hashes of every full block of token_ids, extended as output tokens fill blocks.
        self.block_hashes: list[int] = (
            []
            if not hashing
            else list(block_hashes)
            if block_hashes is not None
            else hash_token_blocks(self.token_ids, block_size, lora_name, seed=hash_seed)
        )
        self.root_hash = root_hash(lora_name, hash_seed) if hashing else 0

    def set_blocks(self, table: list[KVBlock], num_cached_blocks: int) -> None:
        self.block_table = table
        self.capacity = len(table) * self.block_size
        self.num_cached_blocks = num_cached_blocks
        if self.next_cache_at != _NEVER:
            self.next_cache_at = (num_cached_blocks + 1) * self.block_size

    def hash_last_block(self) -> None:
        """``token_ids`` just filled a block: extend the hash chain over it."""
        bs = self.block_size
        n = self.num_tokens
        parent = self.block_hashes[-1] if self.block_hashes else self.root_hash
        self.block_hashes.append(hash_block_ids(parent, self.token_ids[n - bs : n]))

    def extend_output(self, tokens: list[int], hashing: bool) -> None:
        """Append several output tokens at once and extend the hash chain over every block they
        fill (what ``tokens`` calls of the per-step path do)."""
        old = self.num_tokens
        self.token_ids.extend(tokens)
        self.num_tokens = n = old + len(tokens)
        if not hashing:
            return
        bs = self.block_size
        hashes = self.block_hashes
        ids = self.token_ids
        for end in range((old // bs + 1) * bs, n + 1, bs):
            parent = hashes[-1] if hashes else self.root_hash
            hashes.append(hash_block_ids(parent, ids[end - bs : end]))

    def reset_for_recompute(self) -> None:
        """Preempted: KV is gone (blocks freed by the caller); prefill everything again."""
        self.set_blocks([], 0)
        self.num_computed_tokens = 0
        self.was_preempted = True
