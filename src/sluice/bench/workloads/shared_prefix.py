"""Shared-prefix groups (inference-perf ``shared_prefix`` / SGLang ``generated-shared-prefix``).

``num_groups`` system prompts of ``system_prompt_len`` tokens, each followed by
``prompts_per_group`` distinct questions; requests are shuffled and arrive by a seeded process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sluice.bench.arrivals import make_arrivals
from sluice.bench.workloads.base import (
    DEFAULT_SPACE,
    TokenSpace,
    WorkloadRequest,
    content_key,
    tokens,
)


@dataclass(frozen=True, slots=True)
class SharedPrefixConfig:
    num_groups: int = 16
    prompts_per_group: int = 32
    system_prompt_len: int = 2048
    question_len: int = 256
    output_len: int = 128
    rate: float = 8.0
    arrival_process: str = "poisson"
    burstiness: float = 1.0
    seed: int = 0


def shared_prefix(
    cfg: SharedPrefixConfig, space: TokenSpace = DEFAULT_SPACE
) -> list[WorkloadRequest]:
    pairs = [(g, i) for g in range(cfg.num_groups) for i in range(cfg.prompts_per_group)]
    random.Random(cfg.seed).shuffle(pairs)
    times = make_arrivals(cfg.arrival_process, cfg.rate, len(pairs), cfg.burstiness, cfg.seed + 1)
    prefixes = {
        g: tokens(cfg.seed, content_key("group", g), cfg.system_prompt_len, space)
        for g in range(cfg.num_groups)
    }
    return [
        WorkloadRequest(
            request_id=f"sp-g{g}-{i}",
            arrival=t,
            prompt=prefixes[g] + tokens(cfg.seed, content_key("q", g, i), cfg.question_len, space),
            max_tokens=cfg.output_len,
            session_id=f"group-{g}",
        )
        for (g, i), t in zip(pairs, times, strict=True)
    ]
