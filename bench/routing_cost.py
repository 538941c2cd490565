"""Decision cost of the routing policies, and memory of the prefix index.

    .venv/bin/python bench/routing_cost.py [--quick] [--out bench/results/routing_cost.json]

Setup: 16 endpoints, each index slot filled to its bound (27,700 blocks: Llama-3.1-8B on an
H100) with unrelated prompts, then requests whose prompts share a system prefix with what
several endpoints hold. Measured per request, excluding the tokenizer and block hashing (the facts
builder runs once per request, before routing; its cost is reported on its own line):

* ``pick``: ``policy.pick`` (index lookup + scoring over 16 candidates): the decision;
* ``record``: ``policy.on_dispatch`` (the approximate index learning the prompt, with eviction);
* ``hash``: ``hash_text_blocks`` of the prompt's text (approximate facts, no tokenizer).

Memory per cached block is measured with tracemalloc over a filled index.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import time
import tracemalloc
from pathlib import Path

from sluice.routing import Endpoint, EndpointState, RequestFacts, make_policy
from sluice.routing.hashing import hash_text_blocks, hash_token_blocks
from sluice.routing.prefix_index import PrefixIndex

ENDPOINTS = 16
CAPACITY = 27_700  # 16-token blocks of Llama-3.1-8B KV cache on one H100
BLOCK = 16


def _prompt(rng: random.Random, tokens: int) -> list[int]:
    return [rng.randrange(128_000) for _ in range(tokens)]


def _fill(index: PrefixIndex, states: list[EndpointState], rng: random.Random) -> None:
    for s in states:
        index.set_capacity(s.id, CAPACITY)
        # Unrelated 2k-token prompts until the slot is full.
        while index.size(s.id) < CAPACITY:
            index.record(s.id, hash_token_blocks(_prompt(rng, 2048), BLOCK))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(prompt_tokens: int, requests: int, policy_name: str, seed: int = 1) -> dict:
    rng = random.Random(seed)
    states = [
        EndpointState(Endpoint(f"e{i}", f"http://e{i}"), num_blocks=CAPACITY, block_size=BLOCK)
        for i in range(ENDPOINTS)
    ]
    for s in states:
        s.in_flight = rng.randrange(0, 8)
        s.in_flight_prefill_tokens = s.in_flight * 1500
        s.kv_usage = rng.uniform(0.5, 0.8)
    index = PrefixIndex(CAPACITY, tokens_per_block=BLOCK)
    _fill(index, states, rng)
    # "<policy>_lru": the index as a plain LRU of the engine's size (the default before the
    # free-queue model); the default affinity_cost models the engines' free queues.
    name, lru = policy_name.removesuffix("_lru"), policy_name.endswith("_lru")
    policy = make_policy(name, index=index, **({"free_queue": False} if lru else {}))
    for s in states:  # the scraper's update: the free-queue model trims idle entries here
        policy.on_scrape(s)
    system = _prompt(rng, prompt_tokens // 2)
    # Half the endpoints already hold the shared system prefix.
    for s in states[: ENDPOINTS // 2]:
        index.record(s.id, hash_token_blocks(system, BLOCK))
    facts_list = []
    for i in range(requests):
        tokens = system + _prompt(rng, prompt_tokens - len(system))
        facts_list.append(
            RequestFacts(
                model="m",
                prompt_tokens=len(tokens),
                block_hashes=hash_token_blocks(tokens, BLOCK),
                request_id=f"r{i}",
            )
        )
    pick_us: list[float] = []
    record_us: list[float] = []
    pick_cpu_us: list[float] = []
    record_cpu_us: list[float] = []
    clock, cpu = time.perf_counter_ns, time.process_time_ns
    gc.collect()
    for i, facts in enumerate(facts_list):
        c0, t0 = cpu(), clock()
        decision = policy.pick(facts, states, float(i))
        t1, c1 = clock(), cpu()
        # Learning: on_dispatch, and on_complete (the free-queue model releases the prompt).
        policy.on_dispatch(facts, decision.endpoint, float(i))
        policy.on_complete(facts, decision.endpoint, float(i), None, False)
        t2, c2 = clock(), cpu()
        pick_us.append((t1 - t0) / 1000)
        record_us.append((t2 - t1) / 1000)
        pick_cpu_us.append((c1 - c0) / 1000)
        record_cpu_us.append((c2 - c1) / 1000)
    stats = index.stats()
    assert all(size <= cap for size, cap in stats.per_endpoint.values())
    total = [p + r for p, r in zip(pick_us, record_us, strict=True)]
    return {
        "policy": policy_name,
        "prompt_tokens": prompt_tokens,
        "prompt_blocks": prompt_tokens // BLOCK,
        "endpoints": ENDPOINTS,
        "requests": requests,
        "pick_p50_us": round(statistics.median(pick_us), 1),
        "pick_p99_us": round(_pct(pick_us, 0.99), 1),
        "record_p50_us": round(statistics.median(record_us), 1),
        "record_p99_us": round(_pct(record_us, 0.99), 1),
        "pick_record_p99_us": round(_pct(total, 0.99), 1),
        # CPU time of this process only: what the code costs, without the time other
        # processes on a shared machine took the core away.
        "pick_cpu_p50_us": round(statistics.median(pick_cpu_us), 1),
        "pick_cpu_p99_us": round(_pct(pick_cpu_us, 0.99), 1),
        "record_cpu_p99_us": round(_pct(record_cpu_us, 0.99), 1),
        "index_blocks": stats.blocks,
        "index_capacity": stats.capacity,
    }


def measure_hashing(prompt_tokens: int, requests: int, seed: int = 2) -> dict:
    rng = random.Random(seed)
    words = ["river", "lake", "mountain", "delta", "basin", "stream", "valley", "ocean"]
    texts = [" ".join(rng.choice(words) for _ in range(prompt_tokens)) for _ in range(requests)]
    us = []
    for text in texts:
        t0 = time.perf_counter_ns()
        hash_text_blocks(text, 64)
        us.append((time.perf_counter_ns() - t0) / 1000)
    return {
        "prompt_tokens": prompt_tokens,
        "hash_p50_us": round(statistics.median(us), 1),
        "hash_p99_us": round(_pct(us, 0.99), 1),
    }


def measure_memory(blocks_per_endpoint: int = 20_000) -> dict:
    rng = random.Random(3)
    prompts = [
        hash_token_blocks(_prompt(rng, 2048), BLOCK)
        for _ in range(ENDPOINTS * blocks_per_endpoint // 128)
    ]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    index = PrefixIndex(blocks_per_endpoint, tokens_per_block=BLOCK)
    for i, hashes in enumerate(prompts):
        index.record(f"e{i % ENDPOINTS}", hashes)
    # A second endpoint holding the same blocks costs an LRU entry, not a new hash entry.
    for hashes in prompts[: len(prompts) // 4]:
        index.record("shared", hashes)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(s.size_diff for s in after.compare_to(before, "filename"))
    stats = index.stats()
    return {
        "entries": stats.blocks,
        "unique_blocks": stats.unique_blocks,
        "bytes": used,
        "bytes_per_entry": round(used / stats.blocks, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    small, large = (200, 20) if args.quick else (3000, 200)
    rows = []
    for name in ("prefix_affinity", "weighted", "cost_model", "affinity_cost_lru", "affinity_cost"):
        rows.append(measure(4096, small, name))
        rows.append(measure(131_072, large, name))
    hashing = [measure_hashing(4096, small // 4), measure_hashing(131_072, max(5, large // 10))]
    memory = measure_memory()
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "decision": rows,
        "hashing": hashing,
        "memory": memory,
    }
    for row in rows:
        print(
            f"{row['policy']:>16} {row['prompt_tokens']:>7} tok: pick p50 {row['pick_p50_us']}us "
            f"p99 {row['pick_p99_us']}us | record p50 {row['record_p50_us']}us "
            f"p99 {row['record_p99_us']}us | pick+record p99 {row['pick_record_p99_us']}us | "
            f"cpu: pick p50 {row['pick_cpu_p50_us']}us p99 {row['pick_cpu_p99_us']}us "
            f"record p99 {row['record_cpu_p99_us']}us"
        )
    for h in hashing:
        print(
            f"hash_text_blocks {h['prompt_tokens']} tok: p50 {h['hash_p50_us']}us "
            f"p99 {h['hash_p99_us']}us"
        )
    print(f"memory: {memory}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
