"""Reading engines' Prometheus ``/metrics``: the few vLLM series a benchmark needs."""

from __future__ import annotations

import re

import aiohttp

QUERIES = "vllm:prefix_cache_queries_total"
HITS = "vllm:prefix_cache_hits_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
# The simulator's own: how far its engines fell behind the wall clock (absent on real vLLM).
SIM_STEPS = "sluice_sim_steps_total"
SIM_LATE_STEPS = "sluice_sim_late_steps_total"
SIM_LATE_SECONDS = "sluice_sim_late_seconds_total"
SIM_STALL_SECONDS = "sluice_sim_clock_stall_seconds_total"
SIM_CLOCK = (SIM_STEPS, SIM_LATE_STEPS, SIM_LATE_SECONDS, SIM_STALL_SECONDS)

SERIES = (QUERIES, HITS, RUNNING, WAITING, KV_USAGE, *SIM_CLOCK)

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_sums(text: str, names: tuple[str, ...] = SERIES) -> dict:
    """Sum of each named series over all its label sets (engines, models)."""
    wanted = set(names)
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m and m.group(1) in wanted:
            try:
                sums[m.group(1)] += float(m.group(3))
            except ValueError:
                continue
    return sums


async def scrape(session: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> dict:
    """``parse_sums`` of ``url``/metrics; empty on any failure (an engine may be down)."""
    try:
        async with session.get(
            url.rstrip("/") + "/metrics", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status != 200:
                return {}
            return parse_sums(await resp.text())
    except (aiohttp.ClientError, TimeoutError):
        return {}
