"""Run the same workload through Sluice and through peer routers, each in front of fresh
simulated engines, and write one report (JSON, Markdown, PNG) plus the exact error of any router
that could not be made to run.

    bench/peers/install.sh          # once: sglang-router and vllm-router in their own venvs
    .venv/bin/python bench/peers/run_peers.py --workload multi_turn --engines 4 --time-scale 2 \\
        --router sluice:least_load --router sglang:cache_aware --router vllm:power_of_two

A router is ``kind:policy``: ``sluice`` (this repository's gateway, any registered policy;
``sluice-precise``: the same with the engines publishing KV events and the index mirroring them;
``sluice-tokens``: approximate, on exact tokens from the engines' ``/tokenize``),
``sglang`` (PyPI sglang-router) or ``vllm`` (PyPI vllm-router). Peers are installed and run as
published; nothing of theirs is copied or patched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from sluice.bench.engine_metrics import (
    SIM_LATE_SECONDS,
    SIM_LATE_STEPS,
    SIM_STALL_SECONDS,
    SIM_STEPS,
)
from sluice.bench.metrics import summarize
from sluice.bench.procs import free_port, gateway_command, stop, wait_ready
from sluice.bench.report import RunReport, markdown_table, write_all
from sluice.bench.runner import HttpOptions, run_http
from sluice.bench.workloads import build_workload
from sluice.bench.workloads.registry import parse_options
from sluice.sim.launch import EngineStartError, start_engines

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
MODEL = "sim-model"


def router_command(
    kind: str, policy: str, port: int, urls: list[str], kv_events: list[str] | None = None
) -> list[str]:
    if kind == "sluice":
        return gateway_command(port, policy, urls)
    if kind == "sluice-precise":  # the engines publish KV events; the index mirrors them
        return gateway_command(port, policy, urls, kv_events or [])
    if kind == "sluice-tokens":  # approximate index on exact token blocks (engines' /tokenize)
        return gateway_command(port, policy, urls, remote_tokenize=True)
    if kind == "sglang":
        return [
            str(VENVS / "sglang/bin/python"),
            "-m",
            "sglang_router.launch_router",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--policy",
            policy,
            "--log-level",
            "warn",
            "--worker-urls",
            *urls,
        ]
    if kind == "vllm":
        return [
            str(VENVS / "vllm/bin/vllm-router"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--policy",
            policy,
            "--log-level",
            "warning",
            "--worker-urls",
            *urls,
        ]
    raise ValueError(f"unknown router kind {kind!r}: sluice, sglang or vllm")


def run_one(args: argparse.Namespace, spec: str, workload: list, log_dir: Path) -> dict:
    try:
        return _run_one(args, spec, workload, log_dir)
    except EngineStartError as exc:
        return {"router": spec, "error": f"simulated engines did not start: {exc}"[:2000]}


def _run_one(args: argparse.Namespace, spec: str, workload: list, log_dir: Path) -> dict:
    kind, _, policy = spec.partition(":")
    engine_opts = {k: int(v) for k, v in parse_options(args.engine_opt or []).items()}
    with start_engines(
        args.engines,
        time_scale=args.time_scale,
        served_model_name=MODEL,
        kv_events=kind == "sluice-precise",
        **engine_opts,
    ) as fleet:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = log_dir / f"{spec.replace(':', '-')}.log"
        kv_events = [e for e in fleet.kv_event_endpoints if e]
        cmd = router_command(kind, policy, port, fleet.urls, kv_events)
        with open(log_path, "w") as log:
            try:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            except OSError as exc:
                return {"router": spec, "error": f"cannot start {cmd[0]}: {exc}"}
        try:
            error = wait_ready(base, proc, MODEL, args.ready_timeout)
            if error:
                tail = log_path.read_text()[-1500:]
                return {"router": spec, "command": " ".join(cmd), "error": error, "log": tail}
            opts = HttpOptions(
                base_url=base,
                model=MODEL,
                time_scale=args.time_scale,
                engine_urls=fleet.urls,
                scrape_interval=args.scrape_interval,
            )
            t0 = time.perf_counter()
            result = asyncio.run(run_http(workload, opts))
            wall = time.perf_counter() - t0
        finally:
            stop(proc)
    summary = summarize(result.records, prefix_hit_rate=result.prefix_hit_rate)
    summary.extra.update(wall_time_s=wall, time_scale=args.time_scale)
    if result.kv_usage_mean is not None:
        summary.extra["kv_usage_mean"] = result.kv_usage_mean
    summary.extra.update(engine_clock(result.engine_deltas))
    errors = sorted({r.error for r in result.records if not r.ok})[:3]
    return {
        "router": spec,
        "report": RunReport(
            spec,
            summary,
            result.records,
            result.load_series,
            fleet.urls,
            {"command": " ".join(cmd), "errors": errors},
        ),
    }


def engine_clock(deltas: dict[str, float]) -> dict[str, float]:
    """How well the simulated engines kept their schedule during the run (machine headroom).

    A late step delays every token it made, so on a machine too small for the load the routers
    would be compared partly on CPU starvation; the share of late steps says how much.
    """
    steps = deltas.get(SIM_STEPS, 0.0)
    if not steps:
        return {}
    return {
        "late_step_share": deltas.get(SIM_LATE_STEPS, 0.0) / steps,
        "late_seconds": deltas.get(SIM_LATE_SECONDS, 0.0),
        "stall_seconds": deltas.get(SIM_STALL_SECONDS, 0.0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="multi_turn")
    ap.add_argument("--opt", action="append", help="workload key=value")
    ap.add_argument("--trace", default="../shared/traces/mooncake_conversation.jsonl")
    ap.add_argument("--engines", type=int, default=4)
    ap.add_argument("--engine-opt", action="append", help="sim engine int option key=value")
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--router", action="append", required=True, help="kind:policy")
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    ap.add_argument("--scrape-interval", type=float, default=1.0)
    ap.add_argument("--out", default="bench/out/peers")
    ap.add_argument("--name", default="peers")
    args = ap.parse_args()
    out = Path(args.out)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    workload = list(build_workload(args.workload, parse_options(args.opt or []), trace=args.trace))
    reports, failures = [], []
    for spec in args.router:
        print(f"== {spec}: {len(workload)} requests", flush=True)
        outcome = run_one(args, spec, workload, log_dir)
        if "report" in outcome:
            rep = outcome["report"]
            reports.append(rep)
            print(markdown_table([(rep.label, rep.summary)]), flush=True)
            if rep.meta["errors"]:
                print("   request errors:", rep.meta["errors"], flush=True)
        else:
            failures.append(outcome)
            print(f"   FAILED: {outcome['error']}", flush=True)
    if reports:
        write_all(out, reports, args.name)
    (out / f"{args.name}-failures.json").write_text(json.dumps(failures, indent=1))
    command = "python bench/peers/run_peers.py " + " ".join(sys.argv[1:])
    with open(out / f"{args.name}.md", "a") as md:
        md.write(f"\ncommand: `{command}`\n")
        for f in failures:
            md.write(f"\n{f['router']} failed: {f['error']}\n")


if __name__ == "__main__":
    main()
