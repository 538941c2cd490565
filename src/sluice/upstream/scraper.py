"""Read each engine's Prometheus /metrics (vLLM names) into its EndpointState, sub-second.

Only the handful of series routing uses are parsed, with a line scanner rather than a full
exposition parser: a scrape of a vLLM engine is a few hundred lines, most of them skipped.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sluice.routing import EndpointState
from sluice.upstream.client import EngineClient, UpstreamError

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_WANTED = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",  # the name before vLLM 0.9
    "vllm:cache_config_info",
    "vllm:lora_requests_info",
)


@dataclass(slots=True)
class EngineLoad:
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    block_size: int | None = None
    num_blocks: int | None = None
    loras: frozenset[str] = field(default_factory=frozenset)
    max_loras: int | None = None

    def apply(self, state: EndpointState) -> None:
        state.running = self.running
        state.waiting = self.waiting
        state.kv_usage = self.kv_usage
        if self.block_size:
            state.block_size = self.block_size
        if self.num_blocks is not None:
            state.num_blocks = self.num_blocks
        state.loras = self.loras
        if self.max_loras is not None:
            state.max_loras = self.max_loras


def parse_engine_metrics(text: str) -> EngineLoad:
    """Sum requests over engines (data-parallel ranks), take the highest KV usage."""
    load = EngineLoad()
    kv_new: float | None = None
    kv_old: float | None = None
    loras: set[str] = set()
    lora_seen_at = -1.0
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, labels, value = _split(line)
        if name not in _WANTED or value is None:
            continue
        if name == "vllm:num_requests_running":
            load.running += int(value)
        elif name == "vllm:num_requests_waiting":
            load.waiting += int(value)
        elif name == "vllm:kv_cache_usage_perc":
            kv_new = max(kv_new or 0.0, value)
        elif name == "vllm:gpu_cache_usage_perc":
            kv_old = max(kv_old or 0.0, value)
        elif name == "vllm:cache_config_info":
            found = dict(_LABEL.findall(labels))
            load.block_size = _int(found.get("block_size")) or load.block_size
            blocks = _int(found.get("num_gpu_blocks"))
            if blocks is not None:
                load.num_blocks = (load.num_blocks or 0) + blocks
        elif name == "vllm:lora_requests_info" and value >= lora_seen_at:
            # One sample per change, valued by its timestamp: the newest one is current.
            lora_seen_at = value
            found = dict(_LABEL.findall(labels))
            loras = set()
            for key in ("running_lora_adapters", "waiting_lora_adapters"):
                loras.update(a for a in found.get(key, "").split(",") if a)
            load.max_loras = _int(found.get("max_lora"))
    load.kv_usage = kv_new if kv_new is not None else (kv_old or 0.0)
    load.loras = frozenset(loras)
    return load


def _split(line: str) -> tuple[str, str, float | None]:
    brace = line.find("{")
    if brace >= 0:
        close = line.rfind("}")
        name, labels, rest = line[:brace], line[brace + 1 : close], line[close + 1 :]
    else:
        name, _, rest = line.partition(" ")
        labels = ""
    fields = rest.split()
    try:
        return name, labels, float(fields[0]) if fields else None
    except ValueError:
        return name, labels, None


def _int(raw: str | None) -> int | None:
    if raw is None or raw in ("", "None"):
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


class MetricsScraper:
    def __init__(
        self,
        client: EngineClient,
        states: list[EndpointState],
        interval_s: float,
        timeout_s: float,
        on_update: Callable[[EndpointState], None] | None = None,
    ) -> None:
        self._client = client
        self._states = states
        self._interval = interval_s
        self._timeout = timeout_s
        # Called after each successful scrape (the routing policy's ``on_scrape``).
        self._on_update = on_update

    async def run(self) -> None:
        while True:
            await self.scrape_once()
            await asyncio.sleep(self._interval)

    async def scrape_once(self) -> None:
        await asyncio.gather(*(self._scrape(s) for s in self._states))

    async def _scrape(self, state: EndpointState) -> None:
        try:
            status, body = await self._client.get(state.endpoint.url + "/metrics", self._timeout)
        except UpstreamError:
            return  # health is the prober's job; a missed scrape keeps the last values
        if status == 200:
            parse_engine_metrics(body.decode("utf-8", "replace")).apply(state)
            if self._on_update is not None:
                self._on_update(state)
