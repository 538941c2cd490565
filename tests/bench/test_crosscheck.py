"""The cross-check end to end: load runner → gateway process → simulated engine processes."""

import pytest

from sluice.bench.crosscheck import run_crosscheck
from sluice.bench.workloads import MultiTurnConfig, multi_turn


def test_http_through_gateway_and_cluster_sim_agree_on_a_small_workload(tmp_path):
    wl = multi_turn(
        MultiTurnConfig(users=4, rounds=2, system_prompt_len=200, first_prompt_len=100,
                        question_len=(10, 20), answer_len=(10, 20), think_time=0.2,
                        user_rate=8)
    )  # fmt: skip
    check = run_crosscheck(wl, engines=2, policy="round_robin", time_scale=1.0,
                           log_path=tmp_path / "gw.log")  # fmt: skip
    assert check.http.ok == check.sim.ok == len(wl)
    assert check.http.prefix_hit_rate == pytest.approx(check.sim.prefix_hit_rate, abs=0.05)
    assert check.throughput_diff < 0.25
    # HTTP adds real proxy and network time that the simulator does not model: a few ms
    assert 0 <= check.http.ttft_p50 - check.sim.ttft_p50 < 0.05
