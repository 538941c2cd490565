"""One policy against another over many windows of a workload (cluster simulator).

A single TTFT p99 of an overloaded cluster is fragile: one decision that lands differently
cascades, and a neighbouring setting or a neighbouring stretch of the trace moves it by ±10-20%.
This runs every variant on several windows (``--offsets`` into the Mooncake trace, or
``--seeds`` for the synthetic workloads) and reports each window and the geometric mean of the
p99 ratios, so a claim rests on more than one run.

    cd bench && ../.venv/bin/python routing_windows.py --workload mooncake --opt limit=3000 \\
      --opt speedup=3.75 --offsets 0,3000,6000,9000 --variants affinity_cost,sglang_model --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from routing_quality import parse_variant, run_variant

from sluice.bench.workloads.registry import build_workload, parse_options


def _one(job: tuple[str, dict[str, str], str], args: argparse.Namespace) -> dict[str, Any]:
    workload_name, options, spec = job

    def workload() -> Any:
        return build_workload(workload_name, options, trace=args.trace)

    t0 = time.perf_counter()
    row = run_variant(
        parse_variant(spec), workload, args.engines, args.engine_opt, args.block_size,
        bytes_per_token=args.bytes_per_token, scrape_interval=args.scrape_interval,
    )  # fmt: skip
    row["window"] = options.get("offset") or options.get("seed") or "0"
    row["spec"] = spec
    row["run_s"] = round(time.perf_counter() - t0, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="mooncake")
    ap.add_argument("--opt", action="append", default=[], help="workload key=value")
    ap.add_argument("--offsets", default="", help="Mooncake: comma-separated trace offsets")
    ap.add_argument("--seeds", default="", help="synthetic workloads: comma-separated seeds")
    ap.add_argument("--variants", default="affinity_cost,sglang_model")
    ap.add_argument("--engine-opt", action="append", default=[])
    ap.add_argument("--engines", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--scrape-interval", type=float, default=0.25)
    ap.add_argument(
        "--bytes-per-token", type=float, default=4.0, help="text-block variants' token estimate"
    )
    ap.add_argument("--trace", default="/work/shared/traces/mooncake_conversation.jsonl")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    base = parse_options(args.opt)
    key, values = ("offset", args.offsets) if args.offsets else ("seed", args.seeds or "0")
    windows = [v.strip() for v in values.split(",") if v.strip()]
    specs = [s for s in args.variants.split(",") if s]
    jobs = [(args.workload, {**base, key: w}, s) for w in windows for s in specs]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(partial(_one, args=args), jobs))
    by = {(r["window"], r["spec"]): r for r in rows}
    ref = specs[-1]
    lines = [
        "| window | " + " | ".join(f"{s} p99 (s) / KV" for s in specs) + f" | ratio to {ref} |",
        "|---" * (len(specs) + 2) + "|",
    ]
    logs: dict[str, list[float]] = {s: [] for s in specs[:-1]}
    for w in windows:
        cells = [f"{by[w, s]['ttft_p99_s']:.2f} / {by[w, s]['kv_usage_mean']}" for s in specs]
        ratios = []
        for s in specs[:-1]:
            r = by[w, s]["ttft_p99_s"] / by[w, ref]["ttft_p99_s"]
            logs[s].append(math.log(r))
            ratios.append(f"{r:.2f}")
        lines.append(f"| {key} {w} | " + " | ".join(cells) + " | " + ", ".join(ratios) + " |")
    gmeans = {s: math.exp(sum(v) / len(v)) for s, v in logs.items()}
    lines.append(
        "| geometric mean | | | " + ", ".join(f"{s}: {g:.3f}" for s, g in gmeans.items()) + " |"
    )
    table = "\n".join(lines)
    print(table)
    if args.out:
        meta = {
            "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            "workload": args.workload,
            "options": base,
            "windows": windows,
            "rows": rows,
            "geometric_mean_ratio": gmeans,
        }
        args.out.write_text(json.dumps(meta, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
