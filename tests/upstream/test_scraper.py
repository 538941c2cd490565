"""Parsing vLLM's /metrics into endpoint load (names from vLLM v1; the pre-0.9 KV name too)."""

from __future__ import annotations

from sluice.routing import Endpoint, EndpointState
from sluice.upstream.scraper import parse_engine_metrics

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1000"} 1.0
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="1000"} 1.0
vllm:lora_requests_info{max_lora="2",running_lora_adapters="a",waiting_lora_adapters=""} 1.0e9
vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters="c"} 2.0e9
vllm:prompt_tokens_total{engine="0",model_name="m"} 12345.0
"""


def test_vllm_v1_metrics_fill_the_endpoint_state() -> None:
    state = EndpointState(Endpoint(id="e", url="http://x"))
    parse_engine_metrics(VLLM).apply(state)
    assert (state.running, state.waiting) == (5, 4)  # summed over data-parallel engines
    assert state.kv_usage == 0.75  # the fullest engine
    assert (state.block_size, state.num_blocks) == (16, 2000)
    assert state.loras == frozenset({"a", "b", "c"}) and state.max_loras == 2  # newest sample


def test_old_kv_metric_name_and_missing_series() -> None:
    load = parse_engine_metrics('vllm:gpu_cache_usage_perc{model_name="m"} 0.4\n')
    assert load.kv_usage == 0.4 and load.block_size is None and load.running == 0
    state = EndpointState(Endpoint(id="e", url="http://x"), block_size=32)
    load.apply(state)
    assert state.block_size == 32  # not reported: kept
