"""A workload's shape at a glance (for ``sluice bench workload``)."""

from __future__ import annotations

from collections.abc import Iterable

from sluice.bench.workloads.base import WorkloadRequest


def workload_stats(workload: Iterable[WorkloadRequest], block: int = 16) -> str:
    """Counts and the ideal prefix-cache hit rate (an infinite cache shared by everyone)."""
    n = in_tok = out_tok = reusable = 0
    last = 0.0
    seen: set[int] = set()
    for req in workload:
        n += 1
        in_tok += len(req.prompt)
        out_tok += req.max_tokens
        last = max(last, req.arrival)
        h = 0
        full = len(req.prompt) // block
        for i in range(full):
            h = hash((h, tuple(req.prompt[i * block : (i + 1) * block])))
            if h in seen:
                reusable += block
            else:
                seen.add(h)
    ideal = reusable / in_tok if in_tok else 0.0
    return (
        f"requests {n}, input tokens {in_tok} (mean {in_tok / max(n, 1):.0f}), output tokens "
        f"{out_tok} (mean {out_tok / max(n, 1):.0f}), last arrival {last:.1f} s, "
        f"ideal prefix-cache hit rate {ideal:.1%}"
    )
