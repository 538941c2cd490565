"""Start simulated engine servers as child processes, for tests, ``sluice up`` and benchmarks.

    with start_engines(2, time_scale=1.0, num_gpu_blocks=512) as fleet:
        fleet.urls  # ["http://127.0.0.1:41237", "http://127.0.0.1:38411"]

Each engine is its own ``python -m sluice.sim.cli`` process. The parent binds every listening
socket first (port 0: the kernel picks a free one) and hands it over by file descriptor, so there
is no window in which another program can take the port. ``start_engines`` returns once every
``/health`` answers 200.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

# Keyword options of ``start_engines`` and the ``sluice sim`` flag each one becomes.
ENGINE_OPTIONS = frozenset(
    {
        "gpu",
        "model",
        "time_scale",
        "tensor_parallel",
        "block_size",
        "num_gpu_blocks",
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_model_len",
        "max_loras",
        "served_model_name",
        "enable_prefix_caching",
        "scheduling_policy",
        "seed",
        "kv_events_topic",
        "kv_events_map_format",
        "tokenizer",
        "log_level",
    }
)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one), inheritable by child processes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class EngineStartError(RuntimeError):
    """An engine process exited or did not become healthy in time."""


@dataclass
class EngineFleet:
    """Running engine servers; ``stop()`` (or leaving the ``with`` block) ends them all."""

    host: str
    ports: list[int]
    processes: list[subprocess.Popen[bytes]] = field(repr=False)
    kv_event_endpoints: list[str | None] = field(default_factory=list)
    kv_event_replay_endpoints: list[str | None] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def urls(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"http://{host}:{port}" for port in self.ports]

    def __len__(self) -> int:
        return len(self.ports)

    def __enter__(self) -> EngineFleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self, index: int) -> str:
        """What engine ``index`` wrote to stdout/stderr so far (for failure messages)."""
        log = self._logs[index]
        log.flush()
        return Path(log.name).read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every engine (uvicorn shuts down gracefully), SIGKILL what lingers."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()
            Path(log.name).unlink(missing_ok=True)
        self._logs.clear()


def _flags(options: dict[str, Any]) -> list[str]:
    unknown = set(options) - ENGINE_OPTIONS
    if unknown:
        raise TypeError(f"unknown engine option(s): {', '.join(sorted(unknown))}")
    args: list[str] = []
    for key, value in options.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def start_engines(
    count: int = 1,
    *,
    host: str = "127.0.0.1",
    base_port: int = 0,
    kv_events: bool = False,
    kv_events_base_port: int = 0,
    timeout: float = 60.0,
    **engine_options: Any,
) -> EngineFleet:
    """Start ``count`` engine servers and wait until each is healthy.

    ``base_port`` 0 picks free ports; otherwise engine *i* listens on ``base_port + i``.
    ``kv_events`` turns on the ZMQ KV-event publisher and its replay socket (free ports, unless
    ``kv_events_base_port``: PUB on ``base + i``, replay on ``base + count + i``); the bound
    addresses are in ``fleet.kv_event_endpoints`` and ``fleet.kv_event_replay_endpoints``.
    ``engine_options`` are the ``sluice sim`` flags in snake case (``time_scale=4.0``,
    ``num_gpu_blocks=256``, ...).
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    flags = _flags(engine_options)
    sockets = [bind_socket(host, base_port + i if base_port else 0) for i in range(count)]
    env = dict(os.environ)
    # The child must import this very sluice, installed or not.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    fleet = EngineFleet(host=host, ports=[s.getsockname()[1] for s in sockets], processes=[])
    try:
        for i, sock in enumerate(sockets):
            args = [sys.executable, "-m", "sluice.sim.cli", "--fd", str(sock.fileno())]
            args += ["--host", host, *flags]
            if kv_events:
                kv_port = kv_events_base_port + i if kv_events_base_port else 0
                replay_port = kv_events_base_port + count + i if kv_events_base_port else 0
                args += ["--kv-events-port", str(kv_port)]
                args += ["--kv-events-replay-port", str(replay_port)]
            log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by EngineFleet.stop()
                prefix=f"sluice-sim-{i}-", suffix=".log", delete=False
            )
            fleet._logs.append(log)
            process = subprocess.Popen(
                args, pass_fds=[sock.fileno()], stdout=log, stderr=subprocess.STDOUT, env=env
            )
            fleet.processes.append(process)
        for sock in sockets:
            sock.close()  # the children hold their own copies
        deadline = time.monotonic() + timeout
        for i in range(count):
            _wait_healthy(fleet, i, deadline)
        if kv_events:
            for url in fleet.urls:
                info = json.loads(_get(url + "/get_server_info", 2.0))
                fleet.kv_event_endpoints.append(info["kv_events_endpoint"])
                fleet.kv_event_replay_endpoints.append(info["kv_events_replay_endpoint"])
    except BaseException:
        for sock in sockets:
            sock.close()
        fleet.stop()
        raise
    return fleet


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _wait_healthy(fleet: EngineFleet, index: int, deadline: float) -> None:
    url = fleet.urls[index] + "/health"
    while True:
        process = fleet.processes[index]
        if process.poll() is not None:
            raise EngineStartError(
                f"engine {index} exited with status {process.returncode}:\n{fleet.log(index)}"
            )
        try:
            _get(url, 1.0)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise EngineStartError(
                    f"engine {index} did not become healthy at {url}:\n{fleet.log(index)}"
                ) from None
            time.sleep(0.05)
