"""``sluice sim`` and the launcher: engine servers in their own processes, reached by the
official ``openai`` client (sync and async)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from sluice.sim.launch import EngineFleet, EngineStartError, start_engines

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _model(url: str) -> str:
    return openai.OpenAI(base_url=url + "/v1", api_key="x").models.list().data[0].id


def test_sync_and_async_clients_stream_from_each_engine(engine_fleet: EngineFleet) -> None:
    assert len(engine_fleet.urls) == 2 and len(set(engine_fleet.ports)) == 2
    for url in engine_fleet.urls:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model=_model(url),
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6

    async def one(url: str) -> int:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        stream = await client.chat.completions.create(
            model=_model(url),
            messages=[{"role": "user", "content": "hello again"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        usage = [c.usage async for c in stream if c.usage]
        return usage[0].completion_tokens

    async def all_engines() -> list[int]:
        return await asyncio.gather(*(one(url) for url in engine_fleet.urls))

    assert asyncio.run(all_engines()) == [4, 4]


def test_launcher_options_and_kv_event_endpoints() -> None:
    with start_engines(1, num_gpu_blocks=300, max_loras=1, kv_events=True) as fleet:
        info = urllib.request.urlopen(fleet.urls[0] + "/get_server_info").read()
        assert b'"num_gpu_blocks":300' in info and b'"max_loras":1' in info
        (endpoint,) = fleet.kv_event_endpoints
        assert endpoint is not None and endpoint.startswith("tcp://127.0.0.1:")
        (replay,) = fleet.kv_event_replay_endpoints
        assert replay is not None and replay.startswith("tcp://127.0.0.1:") and replay != endpoint
        process = fleet.processes[0]
    assert process.poll() is not None  # stopped on leaving the block


def test_launcher_reports_engines_that_fail_to_start() -> None:
    with pytest.raises(TypeError, match="unknown engine option"):
        start_engines(1, gpus="h100")
    with pytest.raises(EngineStartError, match="exited"):
        start_engines(1, gpu="no-such-gpu")


def test_sluice_sim_count_serves_each_engine_and_stops_on_ctrl_c() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sluice.sim.cli",
            *("--count", "4", "--port", "0", "--num-gpu-blocks", "256"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        urls = [re.search(r"http://\S+", process.stdout.readline()).group(0) for _ in range(4)]  # type: ignore[union-attr]
        assert len(set(urls)) == 4
        deadline = time.monotonic() + 60
        for url in urls:
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=1)
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"{url} never became healthy"
                    time.sleep(0.05)
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            reply = client.completions.create(model=_model(url), prompt="hi", max_tokens=2)
            assert reply.usage is not None and reply.usage.prompt_tokens == 1
        # Ctrl-C reaches the whole foreground group; here we send it to the parent and its
        # children, as a terminal would.
        children = _children(process.pid)
        assert len(children) == 4
        for pid in [process.pid, *children]:
            os.kill(pid, signal.SIGINT)
        assert process.wait(timeout=15) == 0
        for pid in children:
            assert not _alive(pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose that matters here.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
