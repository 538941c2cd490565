"""Benchmark workloads: seeded, reproducible request lists with exact token lengths."""

from sluice.bench.workloads.base import (
    DEFAULT_SPACE,
    TokenSpace,
    WorkloadRequest,
    block_tokens,
    content_key,
    tokens,
)
from sluice.bench.workloads.long_doc_qa import LongDocQAConfig, long_doc_qa
from sluice.bench.workloads.mooncake import MOONCAKE_BLOCK, TraceRow, mooncake, read_trace
from sluice.bench.workloads.multi_turn import MultiTurnConfig, multi_turn
from sluice.bench.workloads.random_control import RandomConfig, random_control
from sluice.bench.workloads.registry import WORKLOADS, build_workload
from sluice.bench.workloads.shared_prefix import SharedPrefixConfig, shared_prefix

__all__ = [
    "DEFAULT_SPACE",
    "MOONCAKE_BLOCK",
    "WORKLOADS",
    "LongDocQAConfig",
    "MultiTurnConfig",
    "RandomConfig",
    "SharedPrefixConfig",
    "TokenSpace",
    "TraceRow",
    "WorkloadRequest",
    "block_tokens",
    "build_workload",
    "content_key",
    "long_doc_qa",
    "mooncake",
    "multi_turn",
    "random_control",
    "read_trace",
    "shared_prefix",
    "tokens",
]
