"""The real-time runner on its own: clock mapping, delivery, abort, idling."""

from __future__ import annotations

import asyncio
import time

import pytest

from sluice.sim.engine import Engine, EngineConfig
from sluice.sim.request import RequestError, RequestOutput, SamplingParams, SimRequest
from sluice.sim.runner import EngineRunner, RequestHandle


def _request(request_id: str, prompt_len: int = 64, max_tokens: int = 20) -> SimRequest:
    return SimRequest(
        request_id,
        list(range(1000, 1000 + prompt_len)),
        SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )


async def _drain(handle: RequestHandle) -> list[RequestOutput]:
    outputs: list[RequestOutput] = []
    while True:
        out = await handle.queue.get()
        assert out is not None
        outputs.append(out)
        if out.finished:
            return outputs


async def test_arrivals_and_durations_follow_the_scaled_wall_clock() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=256, max_model_len=2048))
    runner = EngineRunner(engine, time_scale=2.0)
    runner.start()
    try:
        await asyncio.sleep(0.2)  # idle: the engine's clock must still move with the wall
        start = time.perf_counter()
        handle = runner.submit(_request("a", max_tokens=30))
        outputs = await _drain(handle)
        wall = time.perf_counter() - start
    finally:
        await runner.stop()
    timing = outputs[-1].timing
    assert timing.arrival == pytest.approx(0.1, abs=0.04)  # 0.2 s of wall at scale 2
    assert sum(len(o.new_token_ids) for o in outputs) == 30
    simulated = timing.finished - timing.arrival  # type: ignore[operator]
    assert wall == pytest.approx(2.0 * simulated, rel=0.25, abs=0.03)


async def test_abort_frees_blocks_and_drops_undelivered_output() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=256, max_model_len=2048))
    runner = EngineRunner(engine)
    runner.start()
    try:
        handle = runner.submit(_request("a", max_tokens=1000))
        first = await handle.queue.get()
        assert first is not None and engine.stats.kv_cache_usage > 0
        assert runner.abort("a") is True
        assert engine.stats.kv_cache_usage == 0 and engine.stats.num_running == 0
        assert engine.stats.request_success_total["abort"] == 1
        while (out := await handle.queue.get()) is not None:
            assert not out.finished  # tokens of the step in flight, then the end marker
        assert runner.abort("a") is False  # already gone
        assert runner.in_flight() == 0
    finally:
        await runner.stop()


async def test_refused_request_raises_and_leaves_nothing_behind() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=64, max_model_len=512))
    runner = EngineRunner(engine)
    runner.start()
    try:
        with pytest.raises(RequestError, match="maximum context length"):
            runner.submit(_request("big", prompt_len=500, max_tokens=100))
        assert runner.in_flight() == 0 and not engine.has_unfinished()
    finally:
        await runner.stop()


async def test_a_runner_that_cannot_keep_up_stalls_the_simulated_clock() -> None:
    # A thousand times faster than real time: Python cannot step that fast, so the runner falls
    # behind and must re-anchor rather than let arrivals land after the engine's clock.
    engine = Engine(EngineConfig(num_gpu_blocks=1024, max_model_len=4096))
    runner = EngineRunner(engine, time_scale=0.001)
    runner.start()
    try:
        first = [runner.submit(_request(f"a{i}", 300, 200)) for i in range(8)]
        await asyncio.sleep(0.05)
        second = [runner.submit(_request(f"b{i}", 300, 50)) for i in range(4)]
        results = await asyncio.gather(*(_drain(h) for h in first + second))
    finally:
        await runner.stop()
    timings = [outputs[-1].timing for outputs in results]
    for t in timings:
        assert t.first_scheduled is not None and t.first_token is not None
        assert t.arrival <= t.first_scheduled <= t.first_token <= t.finished  # type: ignore[operator]
    assert min(t.arrival for t in timings[8:]) >= max(t.arrival for t in timings[:8])


async def test_idle_runner_does_not_spin() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=64, max_model_len=512))
    runner = EngineRunner(engine)
    runner.start()
    try:
        await _drain(runner.submit(_request("a", max_tokens=3)))
        steps = engine.stats.steps_total
        cpu = time.process_time()
        await asyncio.sleep(0.3)
        assert engine.stats.steps_total == steps
        assert time.process_time() - cpu < 0.05
        assert runner.alive
    finally:
        await runner.stop()
    assert not runner.alive
