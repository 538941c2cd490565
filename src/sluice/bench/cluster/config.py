"""Build a ``sluice.sim.engine.EngineConfig`` from CLI-style options."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable

from sluice.sim.engine import EngineConfig


def engine_config(
    gpu: str | None = None, model: str | None = None, options: Iterable[str] = ()
) -> EngineConfig:
    """``options`` are ``key=value`` pairs naming ``EngineConfig`` fields (ints, floats, bools)."""
    kwargs: dict[str, object] = {}
    if gpu:
        kwargs["gpu"] = gpu
    if model:
        kwargs["model"] = model
    hints = typing.get_type_hints(EngineConfig)
    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    for pair in options:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"engine option {pair!r}: expected key=value with key in {fields}")
        hint = str(hints[key])
        if "bool" in hint:
            kwargs[key] = value.lower() in ("1", "true", "yes")
        elif "int" in hint:
            kwargs[key] = int(value)
        elif "float" in hint:
            kwargs[key] = float(value)
        else:
            kwargs[key] = value
    return EngineConfig(**kwargs)  # type: ignore[arg-type]
