"""The roofline latency model against the reference's prediction table (vllm-engine-facts §5).

Every cell of "Model predictions" (η_m = 0.8, η_f = 0.7, t_cpu = 0.5 ms) must be reproduced within
3%: the table is rounded to 0.1 ms (decode) and 1 ms (prefill), and for the two smallest GPUs the
reference's own arithmetic differs from the formula by up to 1%.
"""

from __future__ import annotations

import pytest

from sluice.sim.latency import LatencyModel
from sluice.sim.profiles import GPUS, MODELS, get_gpu, get_model, num_gpu_blocks_for

TOLERANCE = 0.03
GPU_ORDER = ["h100", "h200", "a100-80gb", "a100-40gb", "l40s", "a10"]
# Llama-3.1-8B, milliseconds, one row per workload, columns in GPU_ORDER.
TABLE = {
    "decode_b1": [6.5, 4.7, 10.4, 13.5, 23.9, 34.2],
    "decode_b64_ctx1152": [10.2, 7.3, 16.9, 21.6, 37.9, 55.2],
    "prefill_1k": [24, 24, 73, 73, 66, 182],
    "prefill_4k": [96, 96, 302, 302, 261, 754],
}


def model_ms(gpu: str, row: str) -> float:
    lm = LatencyModel(get_gpu(gpu), get_model("llama-3.1-8b"))
    if row == "decode_b1":
        return lm.decode_time(1, 0) * 1e3
    if row == "decode_b64_ctx1152":
        return lm.decode_time(64, 1152) * 1e3
    if row == "prefill_1k":
        return lm.prefill_time(1024) * 1e3
    return lm.prefill_time(4096) * 1e3


@pytest.mark.parametrize("row", list(TABLE))
@pytest.mark.parametrize("column", range(len(GPU_ORDER)))
def test_prediction_table_cell(row: str, column: int) -> None:
    expected = TABLE[row][column]
    assert model_ms(GPU_ORDER[column], row) == pytest.approx(expected, rel=TOLERANCE)


def test_qwen_is_faster_at_batch_1_and_much_faster_at_batch_64() -> None:
    h100 = get_gpu("h100")
    llama = LatencyModel(h100, get_model("llama-3.1-8b"))
    qwen = LatencyModel(h100, get_model("qwen2.5-7b"))
    assert qwen.decode_time(1, 0) == pytest.approx(llama.decode_time(1, 0) * 0.95, rel=0.02)
    assert qwen.decode_time(64, 1152) * 1e3 == pytest.approx(7.9, rel=TOLERANCE)


@pytest.mark.parametrize(("tp", "expected_ms"), [(4, 16.0), (8, 10.0)])
def test_llama_70b_tensor_parallel_batch_1(tp: int, expected_ms: float) -> None:
    lm = LatencyModel(get_gpu("h100"), get_model("llama-3.1-70b"), tensor_parallel=tp)
    # The reference gives these at ±30%; its own sums are 16.2 and 9.6 ms.
    assert lm.decode_time(1, 0) * 1e3 == pytest.approx(expected_ms, rel=0.05)


def test_mixed_step_of_64_decodes_and_a_512_prefill_chunk() -> None:
    lm = LatencyModel(get_gpu("h100"), get_model("llama-3.1-8b"))
    decodes_c, decodes_w = 64 * 1153, 64 * 1152.5
    chunk_c, chunk_w = 512, 512 * 256
    mixed = lm.step_time(64 + 512, decodes_c + chunk_c, decodes_w + chunk_w)
    assert mixed * 1e3 == pytest.approx(16.5, rel=TOLERANCE)
    assert mixed > 1.5 * lm.decode_time(64, 1152)


def test_step_is_the_l2_soft_max_of_memory_and_compute_roofs() -> None:
    """Checked by hand near the ridge (256 tokens on H100), where max() and sum() differ most."""
    gpu, model = get_gpu("h100"), get_model("llama-3.1-8b")
    lm = LatencyModel(gpu, model)
    tokens = 256
    t_mem = (model.weight_bytes + model.kv_bytes_per_token * tokens) / (0.8 * gpu.hbm_bandwidth)
    attention = 4 * model.num_layers * model.num_heads * model.head_dim * tokens * tokens / 2
    t_cmp = (2 * model.matmul_params * tokens + attention) / (0.7 * gpu.flops)
    expected = 0.5e-3 + (t_mem**2 + t_cmp**2) ** 0.5
    assert lm.prefill_time(tokens) == pytest.approx(expected, rel=1e-9)
    assert 0.5e-3 + max(t_mem, t_cmp) < lm.prefill_time(tokens) < 0.5e-3 + t_mem + t_cmp


@pytest.mark.parametrize(
    ("gpu", "expected_tokens"), [("h100", 444_000), ("a100-40gb", 149_000), ("a10", 32_000)]
)
def test_kv_capacity_like_vllm(gpu: str, expected_tokens: int) -> None:
    blocks = num_gpu_blocks_for(get_gpu(gpu), get_model("llama-3.1-8b"))
    assert blocks * 16 == pytest.approx(expected_tokens, rel=0.02)


def test_kv_capacity_h100_8b_is_about_27_7k_blocks() -> None:
    assert num_gpu_blocks_for(get_gpu("h100"), get_model("llama-3.1-8b")) == pytest.approx(
        27_700, rel=0.01
    )


def test_tensor_parallel_adds_all_reduce_and_splits_weights() -> None:
    h100, big = get_gpu("h100"), get_model("llama-3.1-70b")
    tp4 = num_gpu_blocks_for(h100, big, tensor_parallel=4)
    tp8 = num_gpu_blocks_for(h100, big, tensor_parallel=8)
    assert tp8 > 2 * tp4  # half the weights per GPU and half the KV bytes per block
    with pytest.raises(ValueError, match="does not fit"):
        num_gpu_blocks_for(h100, big, tensor_parallel=1)


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown GPU 'b200'; known: h100, h200"):
        get_gpu("b200")
    with pytest.raises(ValueError, match=r"llama-3\.1-70b"):
        get_model("mistral")
    assert get_gpu(" H100 ") is GPUS["h100"] and get_model("Qwen2.5-7B") is MODELS["qwen2.5-7b"]


# Published measurements (reference §5 "Cross-check"): (GPU, batch, context, measured ms).
# Contexts are our assumptions about those runs (1k-token prompts, ShareGPT-sized at moderate
# load); the reference states the model's error as ±10-15% for single-GPU decode.
MEASURED_DECODE = [
    ("a100-40gb", 1, 1024, 13.3),  # vLLM 0.23, concurrency 1
    ("h100", 1, 1024, 6.48),  # vLLM 0.21, concurrency 1, TPOT p50
    ("h100", 8, 400, 6.5),  # llm-d autoscaling PR #1025, ShareGPT ITL p50 at moderate load
    ("h100", 10, 1024, 7.4),  # vLLM 0.6.0, 10 concurrent (7.2-7.6 ms)
]


@pytest.mark.parametrize(("gpu", "batch", "context", "measured_ms"), MEASURED_DECODE)
def test_decode_within_15_percent_of_published_measurements(
    gpu: str, batch: int, context: int, measured_ms: float
) -> None:
    lm = LatencyModel(get_gpu(gpu), get_model("llama-3.1-8b"))
    assert lm.decode_time(batch, context) * 1e3 == pytest.approx(measured_ms, rel=0.15)


def test_low_load_ttft_for_256_tokens_falls_in_the_measured_range() -> None:
    """Measured TTFT p50 at low load on H100 is 14-29 ms: front-end time plus one prefill step."""
    lm = LatencyModel(get_gpu("h100"), get_model("llama-3.1-8b"))
    ttft_ms = (lm.calibration.api_overhead + lm.prefill_time(256)) * 1e3
    assert 14 <= ttft_ms <= 29
