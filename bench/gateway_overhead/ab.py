"""Interleaved A/B of gateway source trees on the ``run.py`` layout (the gateway's CPU per request
is the robust figure: the VM's speed drifts more between minutes than most changes move it).

Each variant is a ``src`` directory put first on ``PYTHONPATH`` over this checkout's venv (make
one with ``git archive <commit> src | tar -x -C /tmp/<name>``). All variants' gateways run at once
on core 0 (the idle ones cost nothing), nginx and wrk on core 1; rounds alternate the order.

    .venv/bin/python bench/gateway_overhead/ab.py --duration 8 --rounds 3 --connections 128 \\
        base=/tmp/base/src head=src

Per run: req/s, p50/p90/p99/p99.9/max (wrk's Lua ``done`` hook), gateway CPU µs per request and
the core-0 shares (gateway / softirq / idle). ``--profile`` records a py-spy profile of each
variant's first run per mode (``pip install py-spy``) into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402

_DONE_HOOK = """
done = function(summary, latency, requests)
  io.write(string.format("PCT %.3f %.3f %.3f %.3f %.3f\\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000))
end
"""


def wrk(url: str, script: Path, connections: int, duration: int) -> tuple[int, float, list[float]]:
    """(requests, req/s, [p50, p90, p99, p99.9, max] in ms) from one wrk run on core 1."""
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    out = subprocess.run(
        [*cmd, "-s", str(script), url], check=True, capture_output=True, text=True
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    found = re.search(r"^PCT (.*)$", out, re.M)
    pct = [float(x) for x in found.group(1).split()] if found else []
    return requests, rps, pct


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="+", help="name=path/to/src")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--modes", default="json,sse")
    parser.add_argument("--profile", action="store_true", help="py-spy each variant's first run")
    parser.add_argument("--out", default="/tmp", help="where --profile writes")
    args = parser.parse_args()
    variants = [v.split("=", 1) for v in args.variants]
    modes = args.modes.split(",")
    root = Path(tempfile.mkdtemp(prefix="sluice-ab-"))
    root.chmod(0o755)  # nginx workers read the bodies as an unprivileged user
    json_port, sse_port = run.free_port(), run.free_port()
    subprocess.run([sys.executable, str(HERE / "make_bodies.py"), str(root / "www")], check=True)
    conf = (HERE / "nginx.conf.template").read_text()
    for key, value in {"@ROOT@": root, "@JSON_PORT@": json_port, "@SSE_PORT@": sse_port}.items():
        conf = conf.replace(key, str(value))
    (root / "nginx.conf").write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    subprocess.run(["taskset", "-c", "1", nginx, "-p", str(root), "-c", "nginx.conf"], check=True)
    scripts = {}
    for mode, model in (("json", "bench-json"), ("sse", "bench-sse")):
        base = HERE / ("post_chat.lua" if mode == "json" else "post_chat_stream.lua")
        scripts[mode] = root / f"{mode}.lua"
        scripts[mode].write_text(base.read_text().replace("bench-model", model) + _DONE_HOOK)
    gateways: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, src in variants:
            port = run.free_port()
            config = root / f"{name}.yaml"
            config.write_text(
                f"server: {{port: {port}, extensions: []}}\nlogging: {{requests: true}}\n"
                "endpoints:\n"
                f"  - {{url: 'http://127.0.0.1:{json_port}', id: json, models: [bench-json]}}\n"
                f"  - {{url: 'http://127.0.0.1:{sse_port}', id: sse, models: [bench-sse]}}\n"
            )
            gateway = subprocess.Popen(
                ["taskset", "-c", "0", str(run.REPO / ".venv" / "bin" / "python"), "-m",
                 "sluice.cli", "serve", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=str(Path(src).resolve())),
            )  # fmt: skip
            gateways[name] = (gateway, port)
        for _, port in gateways.values():
            run.wait_http(f"http://127.0.0.1:{port}/ready")
            for mode in modes:  # warm the pools and code paths
                wrk(f"http://127.0.0.1:{port}/v1/chat/completions", scripts[mode], 32, 2)
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; load {run.load_average()}")
        print(f"{args.connections} connections, {args.duration}s per run\n")
        print(
            "| round | variant | mode | req/s | p50 | p90 | p99 | p99.9 | max | µs/req | core 0 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in range(args.rounds):
            for mode in modes:
                order = list(gateways.items())
                for name, (gateway, port) in order if r % 2 == 0 else order[::-1]:
                    spy = None
                    if args.profile and r == 0:
                        spy = subprocess.Popen(
                            ["taskset", "-c", "1", str(run.REPO / ".venv" / "bin" / "py-spy"),
                             "record", "-p", str(gateway.pid), "-d", str(args.duration - 1),
                             "-r", "200", "-f", "raw", "--nonblocking",
                             "-o", str(Path(args.out) / f"{name}-{mode}.raw")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        )  # fmt: skip
                    before, core_before = run.cpu_seconds(gateway.pid), run.core0_ticks()
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    requests, rps, pct = wrk(url, scripts[mode], args.connections, args.duration)
                    used = run.cpu_seconds(gateway.pid) - before
                    core = run.core0_share(core_before, run.core0_ticks(), used)
                    if spy is not None:
                        spy.wait()
                    cells = " | ".join(f"{x:.2f}" for x in pct) if pct else "n/a"
                    print(
                        f"| {r} | {name} | {mode} | {rps:,.0f} | {cells} "
                        f"| {used * 1e6 / max(1, requests):.0f} | {core} |",
                        flush=True,
                    )
        print(f"\n{time.strftime('%H:%M:%S UTC', time.gmtime())}; load {run.load_average()}")
    finally:
        for gateway, _ in gateways.values():
            gateway.terminate()
            gateway.wait(10)
        run.stop_nginx(nginx, root)


if __name__ == "__main__":
    main()
