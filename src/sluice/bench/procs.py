"""Starting and probing router processes for benchmarks (the gateway, peer routers)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_command(
    port: int,
    policy: str,
    urls: Sequence[str],
    kv_events: Sequence[str] = (),
    remote_tokenize: bool = False,
) -> list[str]:
    """``kv_events``: the engines' KV-event PUB addresses, in ``urls`` order, for precise mode;
    ``remote_tokenize``: exact tokens from the engines' /tokenize (approximate mode)."""
    extra = ["--kv-events", ",".join(kv_events)] if kv_events else []
    if remote_tokenize:
        extra.append("--remote-tokenize")
    return [sys.executable, "-m", "sluice.bench.gateway_proc", "--port", str(port),
            "--policy", policy, *extra, *urls]  # fmt: skip


def probe(base: str, model: str) -> str | None:
    """One tiny completion through the router; None when it answers 200, else the error."""
    body = json.dumps({"model": model, "prompt": "ping", "max_tokens": 1}).encode()
    req = urllib.request.Request(
        base + "/v1/completions", body, {"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


def probe_models(base: str, model: str) -> str | None:
    """``GET /v1/models`` lists ``model``: ready without sending a request through routing
    (a probe completion would advance a round robin and skew a like-for-like comparison)."""
    try:
        with urllib.request.urlopen(base + "/v1/models", timeout=10) as resp:
            ids = [m.get("id") for m in json.loads(resp.read()).get("data", [])]
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if model in ids else f"model {model!r} not listed yet: {ids}"


def wait_ready(
    base: str,
    proc: subprocess.Popen,
    model: str,
    timeout: float,
    check: Callable[[str, str], str | None] = probe,
) -> str | None:
    """Poll ``check`` (default: one completion) until it passes; None when ready, else why not."""
    deadline = time.monotonic() + timeout
    last = "not probed"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        error = check(base, model)
        if error is None:
            return None
        last = error
        time.sleep(0.5)
    return f"not ready after {timeout:.0f} s; last probe: {last}"


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
