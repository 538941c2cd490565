import pytest

from sluice.bench.cluster.config import engine_config
from sluice.bench.workloads import SharedPrefixConfig, shared_prefix
from sluice.bench.workloads.stats import workload_stats


def test_engine_options_are_typed():
    cfg = engine_config("h200", None, ["num_gpu_blocks=512", "enable-prefix-caching=false",
                                       "gpu_memory_utilization=0.8"])  # fmt: skip
    assert cfg.gpu == "h200" and cfg.num_gpu_blocks == 512
    assert cfg.enable_prefix_caching is False and cfg.gpu_memory_utilization == 0.8
    with pytest.raises(ValueError):
        engine_config(None, None, ["no_such_field=1"])
    with pytest.raises(ValueError):
        engine_config(None, None, ["block_size"])


def test_workload_stats_ideal_hit_rate():
    wl = shared_prefix(SharedPrefixConfig(num_groups=1, prompts_per_group=4,
                                          system_prompt_len=64, question_len=16))  # fmt: skip
    text = workload_stats(wl)
    # 4 prompts of 80 tokens; the 64-token prefix (4 blocks) is reused by 3 of them
    assert "requests 4" in text and "input tokens 320" in text
    assert f"ideal prefix-cache hit rate {3 * 64 / 320:.1%}" in text
