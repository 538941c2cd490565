"""``/metrics``: vLLM v1 names, labels and buckets, and values that follow the traffic."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from sluice.sim.metrics import (
    ITL_BUCKETS,
    LATE_STEP_S,
    REQUEST_LATENCY_BUCKETS,
    TTFT_BUCKETS,
    EngineMetrics,
    LoRAState,
    buckets_1_2_5,
)
from sluice.sim.tokenizer import text_of_length

from .conftest import StartServer

BASE_LABELS = {"model_name", "engine"}
GAUGES = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}
COUNTERS = {
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_preemptions",
    "vllm:request_success",
}
# The simulator's own schedule-keeping series (not vLLM's).
CLOCK_COUNTERS = {
    "sluice_sim_steps",
    "sluice_sim_late_steps",
    "sluice_sim_late_seconds",
    "sluice_sim_clock_stall_seconds",
}
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": TTFT_BUCKETS,
    "vllm:inter_token_latency_seconds": ITL_BUCKETS,
    "vllm:request_time_per_output_token_seconds": ITL_BUCKETS,
    "vllm:e2e_request_latency_seconds": REQUEST_LATENCY_BUCKETS,
    "vllm:request_queue_time_seconds": REQUEST_LATENCY_BUCKETS,
    "vllm:request_prefill_time_seconds": REQUEST_LATENCY_BUCKETS,
    "vllm:request_decode_time_seconds": REQUEST_LATENCY_BUCKETS,
    "vllm:request_inference_time_seconds": REQUEST_LATENCY_BUCKETS,
    "vllm:request_prompt_tokens": None,  # 1-2-5 up to max_model_len
    "vllm:request_generation_tokens": None,
}
INFO = {"vllm:cache_config_info", "vllm:lora_requests_info"}


def test_reference_buckets() -> None:
    # The figures from vLLM's PrometheusStatLogger, spelled out once more on purpose.
    assert TTFT_BUCKETS[:4] == (0.001, 0.005, 0.01, 0.02) and TTFT_BUCKETS[-2:] == (640.0, 2560.0)
    assert len(TTFT_BUCKETS) == 22 and len(ITL_BUCKETS) == 19
    assert len(REQUEST_LATENCY_BUCKETS) == 21 and REQUEST_LATENCY_BUCKETS[-1] == 7680.0
    assert buckets_1_2_5(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert buckets_1_2_5(4096)[-1] == 2000


async def _scrape(url: str) -> dict[str, object]:
    async with httpx.AsyncClient() as http:
        response = await http.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


async def test_metric_names_labels_and_buckets(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=512, max_model_len=4096)
    client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    await client.chat.completions.create(
        model=running.model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        extra_body={"ignore_eos": True},
    )
    families = await _scrape(running.url)
    assert set(families) == GAUGES | COUNTERS | CLOCK_COUNTERS | set(HISTOGRAMS) | INFO

    for name in GAUGES:
        family = families[name]
        assert family.type == "gauge"  # type: ignore[attr-defined]
        (sample,) = family.samples  # type: ignore[attr-defined]
        assert sample.labels == {"model_name": running.model, "engine": "0"}

    for name in COUNTERS:
        family = families[name]
        assert family.type == "counter"  # type: ignore[attr-defined]
        totals = [s for s in family.samples if s.name == name + "_total"]  # type: ignore[attr-defined]
        extra = {"finished_reason"} if name == "vllm:request_success" else set()
        assert totals and all(set(s.labels) == BASE_LABELS | extra for s in totals)
    reasons = {
        s.labels["finished_reason"]
        for s in families["vllm:request_success"].samples  # type: ignore[attr-defined]
    }
    assert reasons == {"stop", "length", "abort", "error", "repetition"}

    for name, expected in HISTOGRAMS.items():
        family = families[name]
        assert family.type == "histogram"  # type: ignore[attr-defined]
        buckets = [
            s
            for s in family.samples  # type: ignore[attr-defined]
            if s.name == name + "_bucket"
        ]
        assert all(set(s.labels) == BASE_LABELS | {"le"} for s in buckets)
        edges = [float(s.labels["le"]) for s in buckets if s.labels["le"] != "+Inf"]
        assert edges == list(expected or buckets_1_2_5(4096)), name

    (cache,) = families["vllm:cache_config_info"].samples  # type: ignore[attr-defined]
    assert cache.value == 1.0
    assert cache.labels["block_size"] == "16" and cache.labels["num_gpu_blocks"] == "512"
    assert cache.labels["engine"] == "0" and "enable_prefix_caching" in cache.labels
    (lora,) = families["vllm:lora_requests_info"].samples  # type: ignore[attr-defined]
    assert set(lora.labels) == {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}
    assert lora.labels["max_lora"] == "4"


def _value(families: dict[str, object], name: str, sample: str, **labels: str) -> float:
    for s in families[name].samples:  # type: ignore[attr-defined]
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {sample} {labels}")


async def test_values_follow_the_traffic(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=1024)
    client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    results = await asyncio.gather(
        *(
            client.completions.create(
                model=running.model,
                prompt=text_of_length(50 + 10 * i, seed=i),
                max_tokens=5 + i,
                extra_body={"ignore_eos": True},
            )
            for i in range(3)
        )
    )
    families = await _scrape(running.url)
    prompt = sum(r.usage.prompt_tokens for r in results if r.usage)
    generated = sum(r.usage.completion_tokens for r in results if r.usage)
    assert generated == 5 + 6 + 7
    assert _value(families, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == prompt
    assert _value(families, "vllm:generation_tokens", "vllm:generation_tokens_total") == generated
    success = "vllm:request_success_total"
    assert _value(families, "vllm:request_success", success, finished_reason="length") == 3
    assert _value(families, "vllm:request_success", success, finished_reason="abort") == 0
    for name in HISTOGRAMS:
        if name != "vllm:inter_token_latency_seconds":
            assert _value(families, name, name + "_count") == 3, name
    # One inter-token sample per request per decode step after its first token.
    itl = "vllm:inter_token_latency_seconds"
    assert _value(families, itl, itl + "_count") == generated - 3
    gen_hist = "vllm:request_generation_tokens"
    assert _value(families, gen_hist, gen_hist + "_sum") == generated
    assert _value(families, "vllm:num_requests_running", "vllm:num_requests_running") == 0
    assert _value(families, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc") == 0


async def test_running_and_lora_gauges_during_a_request(sim_server: StartServer) -> None:
    running = await sim_server(num_gpu_blocks=1024, max_loras=2)
    async with httpx.AsyncClient(base_url=running.url) as http:
        loaded = await http.post(
            "/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "/a/sql"}
        )
        assert loaded.status_code == 200
        body = {
            "model": "sql",
            "prompt": text_of_length(40, seed="g"),
            "max_tokens": 400,
            "ignore_eos": True,
            "stream": True,
        }
        async with http.stream("POST", "/v1/completions", json=body) as response:
            async for _ in response.aiter_lines():
                if running.server.engine.stats.num_running:
                    break
            families = await _scrape(running.url)
    assert _value(families, "vllm:num_requests_running", "vllm:num_requests_running") == 1
    assert _value(families, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc") > 0
    (lora,) = families["vllm:lora_requests_info"].samples  # type: ignore[attr-defined]
    assert lora.labels["running_lora_adapters"] == "sql"
    assert lora.labels["max_lora"] == "2"


def test_light_histogram_matches_prometheus_client() -> None:
    """Same exposition as ``prometheus_client.Histogram`` for the same samples, edges included."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from sluice.sim.metrics import LightHistogram

    samples = [0.0, 0.001, 0.0011, 0.02, 0.5, 0.75, 2560.0, 3000.0, 7.5, 7.4999]
    registry = CollectorRegistry()
    reference = Histogram(
        "h", "doc", ["model_name", "engine"], registry=registry, buckets=TTFT_BUCKETS
    )
    light = LightHistogram("h", "doc", TTFT_BUCKETS)
    for value in samples:
        reference.labels("m", "0").observe(value)
        light.observe(value)

    def buckets(families: object) -> dict[str, float]:
        return {
            s.labels["le"]: s.value
            for f in families  # type: ignore[attr-defined]
            for s in f.samples
            if s.name == "h_bucket"
        }

    expected = buckets(text_string_to_metric_families(generate_latest(registry).decode()))
    assert buckets([light.family(["model_name", "engine"], ["m", "0"])]) == expected
    assert light.count == len(samples) and light.sum == sum(samples)


def test_step_delays_count_late_steps_and_stalls() -> None:
    metrics = EngineMetrics(
        lambda: None,  # type: ignore[arg-type,return-value]  # the clock needs no engine stats
        model_name="m",
        max_model_len=64,
        cache_config={},
        lora_state=lambda: LoRAState(0, (), ()),
    )
    metrics.observe_step_delay(0.004, stalled=False)  # ahead of schedule
    metrics.observe_step_delay(-LATE_STEP_S / 2, stalled=False)  # late, within tolerance
    metrics.observe_step_delay(-0.03, stalled=False)
    metrics.observe_step_delay(-0.2, stalled=True)
    clock = metrics.clock
    assert clock.steps == 4 and clock.late_steps == 2
    assert abs(clock.late_seconds - 0.23) < 1e-9 and abs(clock.stall_seconds - 0.2) < 1e-9


async def test_a_starved_engine_reports_late_steps_and_a_stalled_clock(
    sim_server: StartServer,
) -> None:
    """Blocking the event loop mid-stream starves the runner as a busy machine would."""
    running = await sim_server(num_gpu_blocks=512, max_model_len=4096, time_scale=0.1)
    before = await _clock_values(running.url)
    client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    stream = await client.completions.create(
        model=running.model,
        prompt="hello",
        max_tokens=64,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = 0
    async for _ in stream:
        chunks += 1
        if chunks == 2:
            time.sleep(0.2)  # the whole loop, runner included, stops for 200 ms
    after = await _clock_values(running.url)
    assert after["sluice_sim_steps"] - before["sluice_sim_steps"] >= 64
    assert after["sluice_sim_late_steps"] - before["sluice_sim_late_steps"] >= 1
    assert after["sluice_sim_clock_stall_seconds"] >= 0.1
    assert after["sluice_sim_late_seconds"] >= after["sluice_sim_clock_stall_seconds"]


async def _clock_values(url: str) -> dict[str, float]:
    families = await _scrape(url)
    return {
        name: families[name].samples[0].value  # type: ignore[attr-defined]
        for name in CLOCK_COUNTERS
    }
