"""LoRA candidates: endpoints that have the adapter, else ones that can load it; never others.

The adapter comes from ``model:adapter`` or an ``adapter`` field (``facts_builder``). Endpoints
report their loaded adapters and ``max_loras`` (``vllm:lora_requests_info``); one with a free slot
is asked to load the adapter (``Decision.load_adapter``) before the request is forwarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sluice.routing.endpoint import EndpointState


@dataclass(frozen=True, slots=True)
class LoraChoice:
    candidates: list[EndpointState]
    load_adapter: str | None  # set when no candidate has it yet


def split_model_adapter(model: str, separator: str = ":") -> tuple[str, str | None]:
    """``base:adapter`` -> (``base``, ``adapter``); a plain name has no adapter."""
    base, sep, adapter = model.partition(separator)
    if sep and base and adapter:
        return base, adapter
    return model, None


def lora_candidates(adapter: str, candidates: Sequence[EndpointState]) -> LoraChoice:
    loaded = [c for c in candidates if adapter in c.loras]
    if loaded:
        return LoraChoice(loaded, None)
    free = [c for c in candidates if len(c.loras) < c.max_loras]
    return LoraChoice(free, adapter if free else None)
