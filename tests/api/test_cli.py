"""``sluice up`` and ``sluice serve`` as a user runs them (subprocesses, free ports)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SLUICE = [sys.executable, "-m", "sluice.cli"]


def _read_until(process: subprocess.Popen[str], pattern: str, timeout: float = 60) -> str:
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if re.search(pattern, seen):
            return seen
    raise AssertionError(f"no {pattern!r} in output:\n{seen}")


def test_up_starts_engines_and_gateway_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*SLUICE, "up", "--port", "0", "--engines", "1", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,  # the embedded SQLite ledger lands here
    )
    try:
        banner = _read_until(process, r"Ctrl-C stops everything")
        url = re.search(r"Sluice is up: (http://\S+)", banner).group(1)  # type: ignore[union-attr]
        engine = re.search(r"engines: (http://[\d.:]+)", banner).group(1)  # type: ignore[union-attr]
        assert f"curl {url}/v1/chat/completions" in banner and "from openai import OpenAI" in banner
        model = re.search(r'"model": "([^"]+)"', banner).group(1)  # type: ignore[union-attr]
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        key = re.search(r"Development key[^:]*: (sk-sluice-\S+)", banner).group(1)  # type: ignore[union-attr]
        assert f"Bearer {key}" in banner  # the printed examples carry the key
        headers = {"Authorization": f"Bearer {key}"}
        reply = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(engine + "/health", timeout=2)  # the engines are gone too
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_reports_bad_configuration_clearly(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text("server: {port: 99999}\nendpoints: [{url: 'localhost:8000'}]\n")
    result = subprocess.run(
        [*SLUICE, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "server.port" in result.stderr and "endpoints.0.url" in result.stderr
    assert "Traceback" not in result.stderr
    empty = subprocess.run([*SLUICE, "serve"], capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "no endpoints" in empty.stderr
