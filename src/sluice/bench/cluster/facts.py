"""Facts builders for the cluster simulator: what the gateway would extract from a request."""

from __future__ import annotations

from sluice.bench.cluster.sim import FactsBuilder
from sluice.bench.workloads.base import WorkloadRequest
from sluice.routing.facts import RequestFacts
from sluice.routing.hashing import hash_token_blocks


def token_block_facts(model: str, block_size: int = 16) -> FactsBuilder:
    """Exact token counts and chained token-block hashes at ``block_size`` (the engine's), as
    the gateway computes them when a tokenizer is configured."""

    def build(req: WorkloadRequest) -> RequestFacts:
        return RequestFacts(
            model=model,
            prompt_tokens=len(req.prompt),
            block_hashes=hash_token_blocks(req.prompt, block_size),
            max_tokens=req.max_tokens,
            session_key=req.session_id,
            request_id=req.request_id,
            stream=True,
        )

    build.block_size = block_size  # type: ignore[attr-defined]  # the simulator shares them
    return build
