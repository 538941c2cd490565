#!/usr/bin/env bash
# The peer comparison behind bench/results/bench.md: the same two workloads through Sluice's
# policies and through the peer routers, each in front of 4 fresh simulated engines (H100,
# Llama-3.1-8B profile), time scale 4 (4 wall seconds per simulated second).
# Env: TRACE (Mooncake JSONL, default ../shared/traces/...), OUT (default bench/results).
set -euo pipefail
cd "$(dirname "$0")/../.."
trace="${TRACE:-../shared/traces/mooncake_conversation.jsonl}"
out="${OUT:-bench/results}"
routers=(
  --router sluice:round_robin --router sluice:least_load
  --router sluice:prefix_affinity --router sluice:cost_model
  --router sglang:cache_aware --router sglang:round_robin
  --router vllm:cache_aware --router vllm:power_of_two
)
.venv/bin/python bench/peers/run_peers.py --workload multi_turn \
  --opt users=64 --opt rounds=5 --opt user_rate=3 --opt first_prompt_len=6000 \
  --engines 4 --time-scale 4 "${routers[@]}" --out "$out" --name peers-multi-turn
.venv/bin/python bench/peers/run_peers.py --workload mooncake --trace "$trace" \
  --opt limit=300 --opt speedup=2 \
  --engines 4 --time-scale 4 "${routers[@]}" --out "$out" --name peers-mooncake
