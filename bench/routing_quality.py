"""Routing quality on the cluster simulator: TTFT, throughput and prefix-cache hits per policy.

    .venv/bin/python bench/routing_quality.py --workload mooncake --opt speedup=2 --opt limit=3000
    .venv/bin/python bench/routing_quality.py --workload multi_turn --opt users=96 ...

Each run: fresh simulated engines (H100 / Llama-3.1-8B unless --engine-opt says otherwise) driven
by the discrete-event cluster simulator (``sluice.bench.cluster``) with the gateway's own policy
objects. Facts are exact token-block hashes at the engines' block size (a tokenizer configured).
``approx`` runs learn the prefix index from their own decisions; ``precise`` runs feed it from
the engines' KV events (``KvEventMirror``), as the gateway's ZMQ subscriber does.

Reports TTFT p50/p99, output throughput, the engines' prefix-cache hit rate and mean KV usage,
and writes a JSON file and a markdown table (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluice.bench.cluster.config import engine_config
from sluice.bench.cluster.engines import EngineHandle
from sluice.bench.cluster.facts import token_block_facts
from sluice.bench.cluster.sim import simulate
from sluice.bench.metrics import percentile
from sluice.bench.workloads.base import WorkloadRequest
from sluice.bench.workloads.registry import build_workload, parse_options
from sluice.routing import EndpointState, make_policy
from sluice.routing.facts import RequestFacts
from sluice.routing.hashing import (
    DEFAULT_TEXT_BLOCK_BYTES,
    hash_text_blocks,
    hash_token_blocks,
)
from sluice.routing.kv_mirror import KvEventMirror
from sluice.routing.policy import Policy
from sluice.routing.prefix_index import PrefixIndex
from sluice.sim.engine import Engine
from sluice.sim.request import SamplingParams, SimRequest
from sluice.sim.tokenizer import WordTokenizer

MODEL = "sim-model"
SGLANG_TREE_CHARS = 2**26  # sglang-router's default max_tree_size per worker


class MeteredEngine(EngineHandle):
    """An engine handle that also samples KV usage at every scrape (the load level)."""

    __slots__ = ("kv_samples",)

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.kv_samples: list[float] = []

    def refresh(self, state: EndpointState) -> None:
        super().refresh(state)
        if self.engine.has_unfinished():
            self.kv_samples.append(state.kv_usage)


@dataclass
class Variant:
    label: str
    policy: str
    mode: str = "approx"  # approx | text | precise | none
    options: dict[str, Any] = field(default_factory=dict)


VARIANTS = {
    "round_robin": Variant("round_robin", "round_robin", "none"),
    "least_load": Variant("least_load", "least_load", "none"),
    "prefix_affinity": Variant("prefix_affinity (SGLang 0.3/64/1.5)", "prefix_affinity"),
    "weighted": Variant("weighted (llm-d 3:2:2)", "weighted"),
    # SGLang's router as published (own in-flight load, no saturation guard): the stand-in for
    # the real sglang-router, which it matches over HTTP within a few percent (routing.md).
    "sglang_model": Variant(
        "SGLang router model (cache_aware 0.3/64/1.5)",
        "prefix_affinity",
        options={"own_load": True, "kv_saturation": 2.0, "max_waiting": 0, "bounded": False},
    ),
    "cost_model": Variant("cost_model", "cost_model"),
    "affinity_cost": Variant("affinity_cost (default)", "affinity_cost"),
    # Before session 5: the approximate index as a plain LRU of each engine's KV size.
    "affinity_cost_lru": Variant(
        "affinity_cost, plain LRU index", "affinity_cost", options={"free_queue": False}
    ),
    # Before session 6: the load penalty 0.5 s per request whatever the engine's KV usage.
    "affinity_cost_flat": Variant(
        "affinity_cost, flat load penalty", "affinity_cost", options={"load_penalty_low": None}
    ),
    "affinity_cost_text": Variant(
        "affinity_cost, no tokenizer (text blocks)", "affinity_cost", "text"
    ),
    "affinity_cost_precise": Variant(
        "affinity_cost, precise (KV events)",
        "affinity_cost",
        "precise",
        options={"free_queue": False},
    ),
    "cost_model_precise": Variant("cost_model, precise (KV events)", "cost_model", "precise"),
    "prefix_affinity_precise": Variant(
        "prefix_affinity, precise (KV events)", "prefix_affinity", "precise"
    ),
}


def parse_variant(spec: str) -> Variant:
    """``name`` or ``name:key=value:key=value`` (policy options, numbers as floats)."""
    name, *pairs = spec.split(":")
    base = VARIANTS[name]
    if not pairs:
        return base
    options = dict(base.options)
    for pair in pairs:
        key, _, value = pair.partition("=")
        options[key] = float(value)
    label = base.label + " " + " ".join(pairs)
    return Variant(label, base.policy, base.mode, options)


def text_block_facts(bytes_per_token: float) -> Callable[[WorkloadRequest], RequestFacts]:
    """The gateway without a tokenizer: the prompt's text (the simulator's word tokenizer
    decodes the workload's ids) in 64-byte blocks, tokens estimated at 4 bytes each."""
    tokenizer = WordTokenizer()

    def build(req: WorkloadRequest) -> RequestFacts:
        text = tokenizer.decode(req.prompt)
        return RequestFacts(
            model=MODEL,
            prompt_tokens=max(1, int(len(text.encode()) / bytes_per_token)),
            block_hashes=hash_text_blocks(text, DEFAULT_TEXT_BLOCK_BYTES),
            max_tokens=req.max_tokens,
            session_key=req.session_id,
            request_id=req.request_id,
            stream=True,
        )

    return build


def run_variant(
    variant: Variant,
    workload_factory: Callable[[], Any],
    engines: int,
    engine_opts: list[str],
    block_size: int,
    bytes_per_token: float = 4.0,
    scrape_interval: float = 0.0,
) -> dict[str, Any]:
    cfg = engine_config(options=[f"block_size={block_size}", *engine_opts])
    handles: list[MeteredEngine] = []
    text = variant.mode == "text"
    # The index's block unit must match the facts': text blocks stand for 64 / bytes_per_token.
    unit = max(1, round(DEFAULT_TEXT_BLOCK_BYTES / bytes_per_token)) if text else block_size
    # An unbounded peer model keeps SGLang's tree bound: 2^26 characters, ~4 per token.
    capacity = SGLANG_TREE_CHARS // (4 * unit) if variant.options.get("bounded") is False else None
    index = (
        PrefixIndex(capacity, tokens_per_block=unit)
        if capacity
        else PrefixIndex(tokens_per_block=unit)
    )
    mirror = KvEventMirror(index) if variant.mode == "precise" else None

    def factory(i: int) -> EngineHandle:
        sink = None
        if mirror is not None:
            endpoint_id = f"engine-{i}"

            def sink(events: list, endpoint_id: str = endpoint_id) -> None:
                mirror.apply_all(endpoint_id, events)

        handle = MeteredEngine(Engine(cfg, kv_event_sink=sink))
        handles.append(handle)
        return handle

    if variant.mode == "none":
        policy: Policy = make_policy(variant.policy, **variant.options)
    else:
        # Precise mode predicts each dispatch until the engine's events confirm or evict it
        # (routing.prefix_index.predict_dispatch, on by default).
        policy = make_policy(variant.policy, index=index, learn=True, **variant.options)
    result = simulate(
        workload_factory(),
        engines=engines,
        policy=policy,
        engine_factory=factory,
        facts_builder=(
            text_block_facts(bytes_per_token) if text else token_block_facts(MODEL, block_size)
        ),
        model=MODEL,
        scrape_interval=scrape_interval,
    )
    s = result.summary()
    kv = [x for h in handles for x in h.kv_samples]
    return {
        "variant": variant.label,
        "requests": s.requests,
        "failed": s.failed,
        "ttft_p50_s": round(s.ttft_p50, 4),
        "ttft_p99_s": round(s.ttft_p99, 4),
        "ttft_mean_s": round(s.ttft_mean, 4),
        "e2e_p99_s": round(s.e2e_p99, 3),
        "output_tok_s": round(s.output_throughput, 1),
        "request_per_s": round(s.request_throughput, 3),
        "prefix_hit_rate": None if s.prefix_hit_rate is None else round(s.prefix_hit_rate, 4),
        "kv_usage_mean": round(sum(kv) / len(kv), 3) if kv else None,
        "index_blocks": index.stats().blocks if variant.mode != "none" else None,
        "sim_time_s": round(result.sim_time, 1),
        "wall_s": round(result.wall_time, 1),
    }


def _first_token_time(engine: Engine, request_id: str, prompt: list[int]) -> float:
    engine.add_request(
        SimRequest(
            request_id=request_id,
            prompt_token_ids=prompt,
            sampling=SamplingParams(max_tokens=1, ignore_eos=True),
            arrival_time=engine.now,
        )
    )
    elapsed = 0.0
    while engine.has_unfinished():
        out = engine.step()
        elapsed += out.duration
        if any(o.request_id == request_id and o.new_token_ids for o in out.outputs):
            break
    while engine.has_unfinished():
        engine.step()
    return elapsed


def ttft_floor(workload: Any, engine_opts: list[str], block_size: int, top: float) -> dict:
    """TTFT with no queueing and an infinite prefix cache: each request alone on an idle engine
    that holds the longest prefix any earlier request had. No router can beat its p99.

    Only the ``top`` fraction of requests with the most uncached tokens is simulated; every
    other request is assumed faster (prefill time grows with uncached tokens), so the p99 of the
    result is exact as long as ``top`` > 1%.
    """
    cfg = engine_config(options=[f"block_size={block_size}", *engine_opts])
    seen: set[int] = set()
    jobs = []
    for req in workload:
        prompt = list(req.prompt)
        hashes = hash_token_blocks(prompt, block_size)
        depth = 0
        while depth < len(hashes) and hashes[depth] in seen:
            depth += 1
        seen.update(hashes)
        cached = min(depth * block_size, max(0, len(prompt) - 1))
        jobs.append((len(prompt) - cached, cached, prompt))
    jobs.sort(key=lambda j: j[0], reverse=True)
    ttfts = []
    for i, (_, cached, prompt) in enumerate(jobs[: max(1, int(top * len(jobs)))]):
        engine = Engine(cfg)
        if cached >= block_size:
            _first_token_time(engine, f"warm-{i}", prompt[:cached])
        ttfts.append(_first_token_time(engine, f"r-{i}", prompt))
    # The requests not simulated are faster than every simulated one: zeros stand in for them.
    p99 = percentile(ttfts + [0.0] * (len(jobs) - len(ttfts)), 99)
    return {"variant": "floor: alone, infinite cache", "requests": len(jobs), "ttft_p99_s": p99}


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| policy | TTFT p50 (s) | TTFT p99 (s) | output tok/s | prefix hit rate | "
        "mean KV usage | failed |\n|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['variant']} | {r.get('ttft_p50_s', '')} | {r['ttft_p99_s']} | "
        f"{r.get('output_tok_s', '')} | {r.get('prefix_hit_rate', '')} | "
        f"{r.get('kv_usage_mean', '')} | {r.get('failed', '')} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mooncake")
    parser.add_argument("--opt", action="append", default=[], help="workload key=value")
    parser.add_argument("--engine-opt", action="append", default=[], help="EngineConfig k=v")
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument(
        "--bytes-per-token", type=float, default=4.0, help="text-block (no tokenizer) variants"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="names, each optionally :key=value..."
    )
    parser.add_argument("--trace", default="/work/shared/traces/mooncake_conversation.jsonl")
    parser.add_argument(
        "--floor", type=float, default=0.0, help="also compute the TTFT p99 floor (top share)"
    )
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=0.25,
        help="simulated seconds between engine-state refreshes the policy sees (the gateway "
        "scrapes /metrics every 0.25 s; 0 = fresh after every engine step)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (.md written beside)")
    args = parser.parse_args()
    options = parse_options(args.opt)

    def workload() -> Any:
        return build_workload(args.workload, options, trace=args.trace)

    rows = []
    for spec in args.variants.split(","):
        t0 = time.perf_counter()
        variant = parse_variant(spec)
        row = run_variant(
            variant,
            workload,
            args.engines,
            args.engine_opt,
            args.block_size,
            args.bytes_per_token,
            args.scrape_interval,
        )
        rows.append(row)
        print(json.dumps(row), f"({time.perf_counter() - t0:.0f}s)", flush=True)
    if args.floor:
        row = ttft_floor(workload(), args.engine_opt, args.block_size, args.floor)
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = markdown(rows)
    print(table)
    if args.out:
        meta = {
            "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            "workload": args.workload,
            "options": options,
            "engines": args.engines,
            "engine_opts": args.engine_opt,
            "scrape_interval_s": args.scrape_interval,
            "rows": rows,
        }
        args.out.write_text(json.dumps(meta, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
