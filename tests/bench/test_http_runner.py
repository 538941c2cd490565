"""The HTTP runner against a real simulated engine server (a subprocess on a free port)."""

import pytest

from sluice.bench.cluster import simulate
from sluice.bench.metrics import summarize
from sluice.bench.runner import HttpOptions, run_http
from sluice.bench.workloads import MultiTurnConfig, multi_turn
from sluice.sim.launch import start_engines


@pytest.fixture(scope="module")
def engine_url():
    with start_engines(1, time_scale=1.0, served_model_name="sim-model") as fleet:
        yield fleet.urls[0]


WORKLOAD = multi_turn(
    MultiTurnConfig(
        users=3,
        rounds=2,
        system_prompt_len=200,
        first_prompt_len=50,
        question_len=(10, 20),
        answer_len=(8, 12),
        think_time=0.2,
        user_rate=10,
    )
)


async def test_streams_records_exact_tokens_and_reads_engine_counters(engine_url):
    done = []
    result = await run_http(
        WORKLOAD,
        HttpOptions(base_url=engine_url, engine_urls=[engine_url], scrape_interval=0.1),
        total=len(WORKLOAD),
        on_done=lambda n, t: done.append(n),
    )
    assert done[-1] == 6
    by_id = {r.request_id: r for r in result.records}
    for req in WORKLOAD:
        rec = by_id[req.request_id]
        assert rec.ok, rec.error
        # the rendered text re-tokenizes to exactly the workload's tokens
        assert rec.prompt_tokens == req.prompt_tokens
        assert rec.output_tokens == req.max_tokens
        assert len(rec.itls) == req.max_tokens - 1
        assert rec.start < rec.first_token < rec.end
        if req.depends_on:
            assert rec.start >= by_id[req.depends_on].end + req.think_time - 0.01
    # second turns re-send the first turn's prompt: the engine reports prefix hits
    assert result.prefix_hit_rate is not None and result.prefix_hit_rate > 0.3
    assert any(r.cached_tokens for r in result.records)
    assert result.load_series and len(result.load_series[0][1]) == 1


async def test_http_and_cluster_simulator_agree_on_a_light_load(engine_url):
    result = await run_http(WORKLOAD, HttpOptions(base_url=engine_url))
    http = summarize(result.records)
    sim = simulate(WORKLOAD, engines=1, policy="round_robin").summary()
    # light load: both are the engine model's latency; HTTP adds a few ms of overhead
    assert http.tpot_p50 == pytest.approx(sim.tpot_p50, rel=0.25)
    assert http.ttft_p50 == pytest.approx(sim.ttft_p50, abs=0.03)


async def test_bad_model_is_a_failed_record(engine_url):
    result = await run_http(WORKLOAD[:1], HttpOptions(base_url=engine_url, model="nope"))
    (rec,) = result.records
    assert not rec.ok and rec.error.startswith("HTTP 404")
