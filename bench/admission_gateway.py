"""Gateway req/s with auth, limits and the audit ledger on, against the bare gateway.

Same layout as ``bench/gateway_overhead``: an instant upstream (nginx serving a canned chat
completion, its template and bodies reused), the gateway pinned to core 0, nginx and wrk on core 1.
Configurations, each a fresh ``sluice serve`` process with the request log off:

- bare: admission and ledger off (the proxy alone);
- governed: API key auth, in-process limits (key, user, global), priority queue, audit ledger on
  SQLite (WAL), written by the ledger's writer process (the default; it inherits the gateway's
  core pinning, so its CPU competes with the gateway's and is shown in its own column);
- governed + Redis: the same with the limits on Redis (one Lua call to reserve, one to settle);
- with ``--offcore``, also governed with the writer process moved to core 1 (``taskset -p``, as
  the OS would place it on a machine with a free core): not the one-core figure, shown apart.

    .venv/bin/python bench/admission_gateway.py [--duration 10] [--repeat 3] [--parts] [--offcore]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from sluice.admission.devkey import create_key_async

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OVERHEAD = HERE / "gateway_overhead"
TICK = 100
BODY = '{"model":"bench-json","messages":[{"role":"user","content":"Say hello."}],"max_tokens":30}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ok(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200")


def run_wrk(url: str, script: Path, conns: int, duration: int) -> dict[str, float]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    out = subprocess.run(
        [*cmd, "-s", str(script), url], check=True, capture_output=True, text=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def ms(label: str) -> float:
        value, unit = re.search(label + r"\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {
        "rps": rps,
        "p50": ms("50%"),
        "p99": ms("99%"),
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu_seconds(pid: int) -> float:
    """CPU of the gateway's child processes (the ledger writer process), counted apart."""
    return sum(cpu_seconds(child) for child in children(pid))


def children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def gateway_yaml(root: Path, port: int, upstream: int, mode: str, redis: str) -> dict[str, Any]:
    big = {"rpm": 1_000_000_000}
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "logging": {"requests": False, "level": "warning"},
        "endpoints": [
            {"url": f"http://127.0.0.1:{upstream}", "id": "json", "models": ["bench-json"]}
        ],
        "governance": {
            "database_url": f"sqlite:///{root}/sluice.db",
            "ledger": {"spill_dir": str(root / f"spill-{mode}")},
        },
        "admission": {"limits": {"key": big, "user": big, "global": big}},
    }
    if mode == "bare":
        config["admission"] = {"enabled": False}
        config["governance"]["ledger"]["enabled"] = False
    if mode == "auth":  # keys only: no limits, no queue, no ledger
        config["admission"].update(limits={"enabled": False}, queue={"enabled": False})
        config["governance"]["ledger"]["enabled"] = False
    if mode == "limits":  # keys and in-process limits
        config["admission"]["queue"] = {"enabled": False}
        config["governance"]["ledger"]["enabled"] = False
    if mode == "queue":  # keys and the priority queue gate
        config["admission"]["limits"] = {"enabled": False}
        config["governance"]["ledger"]["enabled"] = False
    if mode == "ledger":  # audit ledger only
        config["admission"] = {"enabled": False}
    if mode == "offcore":
        mode = "governed"
    if mode == "redis":
        config["admission"]["limits"].update(
            backend="redis", redis_url=redis, redis_prefix=f"bench:{port}"
        )
    return config


def measure(
    root: Path, mode: str, upstream: int, script: Path, args: argparse.Namespace
) -> dict[str, float]:
    port = free_port()
    cfg = root / f"{mode}.json"
    cfg.write_bytes(orjson.dumps(gateway_yaml(root, port, upstream, mode, args.redis)))
    sluice = REPO / ".venv" / "bin" / "sluice"
    gw = subprocess.Popen(
        ["taskset", "-c", "0", str(sluice), "serve", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ok(f"http://127.0.0.1:{port}/ready")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        run_wrk(url, script, args.connections, 2)  # warm-up
        if mode == "offcore":  # the ledger writer process to the other core
            for child in children(gw.pid):
                subprocess.run(
                    ["taskset", "-p", "-c", "1", str(child)], check=True, capture_output=True
                )
        before, before_children = cpu_seconds(gw.pid), children_cpu_seconds(gw.pid)
        res = run_wrk(url, script, args.connections, args.duration)
        used = cpu_seconds(gw.pid) - before
        requests = max(1.0, res["rps"] * args.duration)
        res["cpu_us"] = used / requests * 1e6
        res["writer_us"] = (children_cpu_seconds(gw.pid) - before_children) / requests * 1e6
        return res
    finally:
        gw.terminate()
        gw.wait(timeout=20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--parts", action="store_true", help="also auth, limits, queue, ledger alone")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (medians shown)")
    ap.add_argument(
        "--offcore", action="store_true", help="also governed with the writer process on core 1"
    )
    args = ap.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found")
    load_start = f"{os.getloadavg()[0]:.2f}"
    root = Path(tempfile.mkdtemp(prefix="sluice-admgw-"))
    root.chmod(0o755)
    json_port, sse_port = free_port(), free_port()
    subprocess.run(
        [sys.executable, str(OVERHEAD / "make_bodies.py"), str(root / "www")], check=True
    )
    conf = (OVERHEAD / "nginx.conf.template").read_text()
    for k, v in {"@ROOT@": root, "@JSON_PORT@": json_port, "@SSE_PORT@": sse_port}.items():
        conf = conf.replace(k, str(v))
    (root / "nginx.conf").write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    subprocess.run(["taskset", "-c", "1", nginx, "-p", str(root), "-c", "nginx.conf"], check=True)
    db_url = f"sqlite:///{root}/sluice.db"
    _, key = asyncio.run(
        create_key_async(db_url, tenant="bench", user="bench", tier="pro", rpm=1_000_000_000)
    )
    script = root / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\nwrk.body = \'{BODY}\'\n'
    )
    results: dict[str, dict[str, float]] = {}
    try:
        wait_ok(f"http://127.0.0.1:{json_port}/health")
        results["direct"] = run_wrk(
            f"http://127.0.0.1:{json_port}/v1/chat/completions",
            script,
            args.connections,
            args.duration,
        )
        modes = (
            ["bare", "governed", "redis"]
            + (["auth", "limits", "queue", "ledger"] if args.parts else [])
            + (["offcore"] if args.offcore else [])
        )
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        # Interleaved rounds (bare, governed, ... then again): drift in the machine's load hits
        # every configuration alike; the table shows per-configuration medians.
        for _ in range(args.repeat):
            for mode in modes:
                runs[mode].append(measure(root, mode, json_port, script, args))
        for mode, rounds in runs.items():
            results[mode] = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    finally:
        subprocess.run([nginx, "-p", str(root), "-c", "nginx.conf", "-s", "stop"], check=False)
    bare = results["bare"]["rps"]
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load average at start {load_start}, at end {os.getloadavg()[0]:.2f}; "
        f"wrk -t1 -c{args.connections} -d{args.duration}s, JSON chat completion; "
        f"medians of {args.repeat} interleaved rounds\n"
    )
    bare_cpu = results["bare"]["cpu_us"]
    print(
        "| configuration | req/s | % of bare req/s | p50 ms | p99 ms | gw CPU µs/req "
        "| req per CPU-s, % of bare | writer process CPU µs/req "
        "| req per CPU-s incl. writer, % of bare | non-2xx |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    labels = {
        "direct": "nginx direct (no gateway)",
        "bare": "gateway, bare",
        "governed": "gateway, auth + limits (in-process) + queue + ledger",
        "redis": "gateway, auth + limits (Redis) + queue + ledger",
        "auth": "gateway, auth only",
        "limits": "gateway, auth + limits (in-process)",
        "queue": "gateway, auth + queue",
        "ledger": "gateway, audit ledger only",
        "offcore": "(writer process on core 1) auth + limits (in-process) + queue + ledger",
    }
    for mode, label in labels.items():
        if mode not in results:
            continue
        r = results[mode]
        share = "" if mode == "direct" else f"{100 * r['rps'] / bare:.0f}%"
        cpu = f"{r['cpu_us']:.0f}" if "cpu_us" in r else ""
        per_cpu = f"{100 * bare_cpu / r['cpu_us']:.0f}%" if "cpu_us" in r else ""
        writer = f"{r['writer_us']:.0f}" if r.get("writer_us") else ""
        # What one core would serve with the writer process on it too (the honest one-core
        # capacity; under load from other processes, req/s favours the two-process setup).
        with_writer = (
            f"{100 * bare_cpu / (r['cpu_us'] + r['writer_us']):.0f}%" if r.get("writer_us") else ""
        )
        print(
            f"| {label} | {r['rps']:.0f} | {share} | {r['p50']:.2f} | {r['p99']:.2f} "
            f"| {cpu} | {per_cpu} | {writer} | {with_writer} | {r['errors']:.0f} |"
        )


if __name__ == "__main__":
    main()
