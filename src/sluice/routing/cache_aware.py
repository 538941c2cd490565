"""What every prefix-cache-aware policy shares: the index lookup, learning, token accounting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sluice.routing.endpoint import EndpointState
from sluice.routing.facts import RequestFacts
from sluice.routing.policy import Decision, Policy
from sluice.routing.prefix_index import PrefixIndex


@dataclass(slots=True)
class CacheView:
    """The index's answer for one request over its candidates."""

    depths: dict[str, int]  # endpoint id -> matched leading blocks (absent: none)
    prompt_blocks: int
    prompt_tokens: int
    tokens_per_block: int

    def cached_tokens(self, endpoint_id: str) -> int:
        # The engine always recomputes the prompt's last token, so a full hit is n - 1.
        depth = self.depths.get(endpoint_id, 0)
        return min(depth * self.tokens_per_block, max(0, self.prompt_tokens - 1))

    def uncached_tokens(self, endpoint_id: str) -> int:
        return self.prompt_tokens - self.cached_tokens(endpoint_id)

    def fraction(self, endpoint_id: str) -> float:
        if not self.prompt_blocks:
            return 0.0
        return self.depths.get(endpoint_id, 0) / self.prompt_blocks


def least_loaded(candidates: Sequence[EndpointState]) -> EndpointState:
    """The tie-break every policy shares: outstanding requests, then engine running, then KV."""
    return min(candidates, key=lambda c: (c.load(), c.running, c.kv_usage))


class CacheAwarePolicy(Policy):
    """Base of the policies that read the prefix index.

    ``learn=True``: each decision is recorded in the index, as if the chosen engine now caches
    the prompt -- the approximate mode's only source, and in precise mode (index fed by the
    engines' KV events, ``routing.kv_mirror``) a prediction covering the time until the engine's
    own BlockStored arrives. ``learn=False``: decisions never write to the index.

    ``free_queue=True`` (approximate mode): the index models each engine's free queue -- a
    prompt is pinned while its request is in flight and evictable after, and the evictable part
    is bounded by the engine's free blocks (``PrefixIndex.pin``). Without it, a prompt counts as
    cached from its dispatch until the index overflows the engine's whole KV size.
    """

    def __init__(
        self,
        index: PrefixIndex | None = None,
        learn: bool = True,
        bounded: bool = True,
        free_queue: bool = False,
    ) -> None:
        self.index = index if index is not None else PrefixIndex()
        self.learn = learn
        # False: the index keeps its own bound instead of each engine's KV size (a peer model).
        self.bounded = bounded
        self.free_queue = free_queue and learn
        self._geometry: dict[str, tuple[int, int, int]] = {}

    def view(self, facts: RequestFacts, candidates: Sequence[EndpointState]) -> CacheView:
        if self.bounded:
            self._sync_capacity(candidates)
        depths = (
            self.index.match(facts.block_hashes, among=[c.id for c in candidates])
            if facts.block_hashes
            else {}
        )
        return CacheView(
            depths=depths,
            prompt_blocks=len(facts.block_hashes),
            prompt_tokens=facts.prompt_tokens,
            tokens_per_block=self.index.tokens_per_block,
        )

    def _sync_capacity(self, candidates: Sequence[EndpointState]) -> None:
        # The bound follows the engine's KV size (num_gpu_blocks x block_size tokens) once the
        # scraper has read vllm:cache_config_info; converted to index blocks.
        # The index's unit may change too (approximate mode learning its bytes per token).
        unit = self.index.tokens_per_block
        for c in candidates:
            geometry = (c.num_blocks, c.block_size, unit)
            if c.num_blocks and self._geometry.get(c.id) != geometry:
                self._geometry[c.id] = geometry
                tokens = c.num_blocks * c.block_size
                self.index.set_capacity(c.id, max(1, tokens // self.index.tokens_per_block))

    def on_scrape(self, endpoint: EndpointState) -> None:
        # vLLM's KV usage is 1 - free / total, its free blocks including the evictable cached
        # ones: what is left of the free pool is what idle prompts can still occupy. Applied
        # here, not in the decision: a jump in usage can evict thousands of entries at once.
        if not (self.free_queue and endpoint.num_blocks):
            return
        # Every scrape resets the bound, replacing what releases added since the last one.
        unit = self.index.tokens_per_block
        free = int((1.0 - endpoint.kv_usage) * endpoint.num_blocks * endpoint.block_size) // unit
        self.index.set_idle_capacity(endpoint.id, free)

    def decision(
        self,
        chosen: EndpointState,
        view: CacheView,
        reason: str,
        scores: dict[str, float],
    ) -> Decision:
        cached = view.cached_tokens(chosen.id)
        return Decision(
            chosen,
            reason,
            scores,
            cached_tokens=cached,
            prefill_tokens=view.prompt_tokens - cached,
        )

    def on_dispatch(self, facts: RequestFacts, endpoint: EndpointState, now: float) -> None:
        if not (self.learn and facts.block_hashes):
            return
        if self.free_queue:
            self.index.pin(endpoint.id, facts.block_hashes)
        else:
            self.index.record(endpoint.id, facts.block_hashes)

    def on_complete(
        self,
        facts: RequestFacts,
        endpoint: EndpointState,
        now: float,
        ttft: float | None,
        ok: bool,
        output_tokens: int = 0,
    ) -> None:
        # Every path ends here once per dispatch (success, error, cancellation, retry).
        if self.free_queue and facts.block_hashes:
            generated = output_tokens // self.index.tokens_per_block
            self.index.unpin(endpoint.id, facts.block_hashes, generated)
