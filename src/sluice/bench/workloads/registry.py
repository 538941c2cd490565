"""Build a workload by name with ``key=value`` options (what the CLI passes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sluice.bench.workloads.base import DEFAULT_SPACE, TokenSpace, WorkloadRequest
from sluice.bench.workloads.long_doc_qa import LongDocQAConfig, long_doc_qa
from sluice.bench.workloads.mooncake import DEFAULT_TRACE, mooncake, read_trace
from sluice.bench.workloads.multi_turn import MultiTurnConfig, multi_turn
from sluice.bench.workloads.random_control import RandomConfig, random_control
from sluice.bench.workloads.shared_prefix import SharedPrefixConfig, shared_prefix

_CONFIGS: dict[str, type] = {
    "multi_turn": MultiTurnConfig,
    "shared_prefix": SharedPrefixConfig,
    "long_doc_qa": LongDocQAConfig,
    "random": RandomConfig,
}
_BUILDERS = {
    "multi_turn": multi_turn,
    "shared_prefix": shared_prefix,
    "long_doc_qa": long_doc_qa,
    "random": random_control,
}
WORKLOADS = ("mooncake", *_CONFIGS)
_MOONCAKE_OPTIONS = {"speedup", "offset", "limit", "repeat", "max_output", "seed"}


def _coerce(value: Any, default: Any) -> Any:
    if not isinstance(value, str):
        return value
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(default, tuple):
        return tuple(int(v) for v in value.replace("-", ",").split(","))
    if isinstance(default, int) and not isinstance(default, bool):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def build_workload(
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    trace: str | Path = DEFAULT_TRACE,
    space: TokenSpace = DEFAULT_SPACE,
) -> Iterable[WorkloadRequest]:
    """``mooncake`` is lazy (an iterator); the others are lists."""
    opts = dict(options or {})
    if name == "mooncake":
        unknown = set(opts) - _MOONCAKE_OPTIONS
        if unknown:
            raise ValueError(f"unknown mooncake options {sorted(unknown)}")
        typed: dict[str, Any] = {}
        for key, value in opts.items():
            typed[key] = float(value) if key == "speedup" else int(value)
        return mooncake(read_trace(trace), space=space, **typed)
    try:
        config_cls = _CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    unknown = set(opts) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {name} options {sorted(unknown)}; known: {sorted(defaults)}")
    cfg = config_cls(**{k: _coerce(v, defaults[k]) for k, v in opts.items()})
    return _BUILDERS[name](cfg, space)


def parse_options(pairs: Iterable[str]) -> dict[str, str]:
    """``["users=8", "rounds=4"]`` → ``{"users": "8", "rounds": "4"}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"workload option {pair!r} is not key=value")
        out[key.strip().replace("-", "_")] = value.strip()
    return out
