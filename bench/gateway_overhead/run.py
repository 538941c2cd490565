"""Gateway overhead against an instant upstream (nginx serving canned OpenAI answers).

Layout on a 2-core machine: the gateway pinned to core 0 (``taskset -c 0``); nginx and wrk on
core 1. For each mode (JSON, 32-event SSE stream) and connection count (1, 32, 128) it runs wrk
against nginx directly, then through the gateway, and prints a Markdown table: req/s, p50/p99,
the latency the gateway adds, gateway CPU microseconds per request and its RSS.

    bench/gateway_overhead/run.sh [--duration 10] [--connections 1,32,128] [--no-request-log]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TICK = os.sysconf("SC_CLK_TCK")
NICE: list[str] = []


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200")
        time.sleep(0.1)


def to_ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:  # wrk prints no latency when every request failed
        return float("nan")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, script: Path, connections: int, duration: int) -> WrkResult:
    cmd = [*NICE, "taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    cmd += ["--latency", "-s", str(script), url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored: "92.50%" in the +/- Stdev column must not read as the 50th percentile.
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: .*?(\d+) timeout"):
        found = re.search(pattern, out)
        if found:
            errors += int(found.group(1))
    found = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+)", out)
    if found:
        errors += sum(int(g) for g in found.groups())
    return WrkResult(requests, rps, p50, p99, errors)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def core0_ticks() -> list[int]:
    """Core 0's time counters from /proc/stat (user nice system idle iowait irq softirq ...)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu0 "):
            return [int(x) for x in line.split()[1:]]
    return []


def core0_share(before: list[int], after: list[int], gateway_s: float) -> str:
    """How core 0 was spent during a run: the gateway process's share, the network stack's
    softirq share (loopback packets; partly inside the process's own system time, so the two
    may add up to more than 100 %), idle. A gateway share well below 100 % with little idle
    means other work crowded it out."""
    if not before or not after:
        return "n/a"
    delta = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(delta[:8]) or 1
    gateway = gateway_s * TICK / total
    softirq = delta[6] / total
    idle = (delta[3] + delta[4]) / total
    return f"{gateway:.0%} / {softirq:.0%} / {idle:.0%}"


def load_average() -> str:
    """1, 5 and 15 minute load averages: how busy the machine was around the run."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss / 1024, hwm / 1024


def floor_rows(root: Path, script: Path, conns: list[int], duration: int) -> None:
    """Bare uvicorn on the gateway's core, answering the same JSON body without an upstream."""
    port = free_port()
    floor = subprocess.Popen(
        [*NICE, "taskset", "-c", "0", sys.executable, str(HERE / "floor_app.py"), str(port),
         str(root / "www" / "chat.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        print("\nFloor (bare uvicorn + uvloop + httptools, canned JSON, no upstream, core 0):\n")
        print("| conns | req/s | p50 | p99 | CPU µs/req |")
        print("|---|---|---|---|---|")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        for c in conns:
            before = cpu_seconds(floor.pid)
            result = wrk(url, script, c, duration)
            used = cpu_seconds(floor.pid) - before
            print(
                f"| {c} | {result.rps:,.0f} | {result.p50_ms:.3f} ms | {result.p99_ms:.3f} ms "
                f"| {used * 1e6 / max(1, result.requests):.0f} |",
                flush=True,
            )
    finally:
        floor.terminate()
        floor.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="1,32,128")
    parser.add_argument("--no-request-log", action="store_true")
    parser.add_argument("--floor", action="store_true", help="also measure bare uvicorn")
    parser.add_argument(
        "--extensions", action="store_true", help="with admission (auth off) and audit ledger"
    )
    parser.add_argument(
        "--nice", type=int, default=0, help="run gateway, nginx and wrk at this nice level"
    )
    args = parser.parse_args()
    # Stopped with SIGTERM: still stop the gateway and nginx (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    global NICE
    NICE = ["nice", "-n", str(args.nice)] if args.nice else []
    conns = [int(c) for c in args.connections.split(",")]
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None and not Path("/usr/sbin/nginx").exists():
            sys.exit(f"{tool} not found: apt-get install nginx-light wrk util-linux")
    root = Path(tempfile.mkdtemp(prefix="sluice-gwbench-"))
    root.chmod(0o755)  # nginx workers run as an unprivileged user and must read the bodies
    json_port, sse_port, gw_port = free_port(), free_port(), free_port()
    subprocess.run([sys.executable, str(HERE / "make_bodies.py"), str(root / "www")], check=True)
    conf = (HERE / "nginx.conf.template").read_text()
    for key, value in {"@ROOT@": root, "@JSON_PORT@": json_port, "@SSE_PORT@": sse_port}.items():
        conf = conf.replace(key, str(value))
    (root / "nginx.conf").write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    subprocess.run(
        [*NICE, "taskset", "-c", "1", nginx, "-p", str(root), "-c", "nginx.conf"], check=True
    )
    if args.extensions:  # admission (limits, queue; no keys) and the audit ledger
        # Limits are checked on every request but set above what one core can serve: the
        # default global 10,000 rpm would turn most of the run into cheap 429s.
        extensions = (
            "admission: {auth: {enabled: false}, limits: {global: {rpm: 1000000000}}}\n"
            f"governance: {{database_url: 'sqlite:///{root}/sluice.db', "
            f"ledger: {{spill_dir: '{root}/spill'}}}}\n"
        )
    else:  # the proxy alone
        extensions = ""
    (root / "gateway.yaml").write_text(
        extensions + f"server: {{port: {gw_port}"
        f"{'' if args.extensions else ', extensions: []'}}}\n"
        f"logging: {{requests: {'false' if args.no_request_log else 'true'}}}\n"
        "endpoints:\n"
        f"  - {{url: 'http://127.0.0.1:{json_port}', id: json, models: [bench-json]}}\n"
        f"  - {{url: 'http://127.0.0.1:{sse_port}', id: sse, models: [bench-sse]}}\n"
    )
    # ``sluice serve`` as users run it (the CLI imports only the invoked command's module).
    sluice = [str(REPO / ".venv" / "bin" / "python"), "-m", "sluice.cli", "serve"]
    gateway = subprocess.Popen(
        [*NICE, "taskset", "-c", "0", *sluice, "--config", str(root / "gateway.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    scripts = {}
    for mode, model in (("json", "bench-json"), ("sse", "bench-sse")):
        base = HERE / ("post_chat.lua" if mode == "json" else "post_chat_stream.lua")
        script = root / f"{mode}.lua"
        script.write_text(base.read_text().replace("bench-model", model))
        scripts[mode] = script
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/ready")
        print(
            f"machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
            f"; load average {load_average()}"
        )
        print(
            f"request log: {'off' if args.no_request_log else 'on (to /dev/null)'}; "
            f"duration {args.duration}s per run; nice {args.nice}; "
            f"extensions: {'admission (no auth) + audit ledger' if args.extensions else 'none'}\n"
        )
        print(
            "| mode | conns | direct req/s | gateway req/s | direct p50 | gateway p50 | added p50 "
            "| direct p99 | gateway p99 | added p99 | gw CPU µs/req | req/s per gw CPU-second "
            "| gw RSS MB (peak) | errors direct/gw | core 0: gw / softirq / idle |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        ports = {"json": json_port, "sse": sse_port}
        for mode in ("json", "sse"):
            # Warm the gateway's connection pool and code paths.
            wrk(f"http://127.0.0.1:{gw_port}/v1/chat/completions", scripts[mode], 32, 2)
            for c in conns:
                direct = wrk(
                    f"http://127.0.0.1:{ports[mode]}/v1/chat/completions",
                    scripts[mode], c, args.duration,
                )  # fmt: skip
                before = cpu_seconds(gateway.pid)
                core_before = core0_ticks()
                through = wrk(
                    f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                    scripts[mode], c, args.duration,
                )  # fmt: skip
                used = cpu_seconds(gateway.pid) - before
                core = core0_share(core_before, core0_ticks(), used)
                rss, peak = rss_mb(gateway.pid)
                print(
                    f"| {mode} | {c} | {direct.rps:,.0f} | {through.rps:,.0f} "
                    f"| {direct.p50_ms:.3f} ms | {through.p50_ms:.3f} ms "
                    f"| {through.p50_ms - direct.p50_ms:+.3f} ms "
                    f"| {direct.p99_ms:.3f} ms | {through.p99_ms:.3f} ms "
                    f"| {through.p99_ms - direct.p99_ms:+.3f} ms "
                    f"| {used * 1e6 / max(1, through.requests):.0f} "
                    f"| {through.requests / max(used, 1e-9):,.0f} "
                    f"| {rss:.0f} ({peak:.0f}) | {direct.errors}/{through.errors} | {core} |",
                    flush=True,
                )
        if args.floor:
            floor_rows(root, scripts["json"], conns, args.duration)
        print(f"\nload average at the end: {load_average()}")
    finally:
        gateway.terminate()
        gateway.wait(10)
        stop_nginx(nginx, root)


def stop_nginx(nginx: str, root: Path) -> None:
    """Stop the benchmark's nginx and remove its scratch directory."""
    subprocess.run([nginx, "-p", str(root), "-c", "nginx.conf", "-s", "stop"], check=False)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
