import json

from sluice.bench.engine_metrics import (
    HITS,
    KV_USAGE,
    QUERIES,
    RUNNING,
    SIM_CLOCK,
    SIM_LATE_STEPS,
    SIM_STEPS,
    WAITING,
    parse_sums,
)
from sluice.bench.metrics import RequestRecord, summarize
from sluice.bench.report import RunReport, markdown_table, write_all

PROM = """# HELP vllm:prefix_cache_queries_total x
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1200.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e9
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 300.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 100.0
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting_by_reason{engine="0"} 9.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.75
sluice_sim_steps_total{engine="0",model_name="m"} 1000.0
sluice_sim_steps_total{engine="1",model_name="m"} 500.0
sluice_sim_late_steps_total{engine="1",model_name="m"} 15.0
"""


def test_parse_sums_adds_label_sets_and_ignores_other_series():
    sums = parse_sums(PROM)
    clock = dict.fromkeys(SIM_CLOCK, 0.0) | {SIM_STEPS: 1500.0, SIM_LATE_STEPS: 15.0}
    assert sums == {
        QUERIES: 1200.0, HITS: 400.0, RUNNING: 3.0, WAITING: 2.0, KV_USAGE: 0.75, **clock
    }  # fmt: skip
    assert parse_sums("") == dict.fromkeys(
        (QUERIES, HITS, RUNNING, WAITING, KV_USAGE, *SIM_CLOCK), 0.0
    )


def _records():
    return [
        RequestRecord(
            f"r{i}", i * 0.5, i * 0.5 + 0.2, i * 0.5 + 0.1, 100, 10, "e0", 50, itls=[0.01] * 9
        )
        for i in range(20)
    ]


def test_markdown_table_rows():
    s = summarize(_records(), prefix_hit_rate=0.5)
    table = markdown_table([("rr", s), ("ll", s)])
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run |")
    assert "| rr | 20/20 | 0.100 | 0.100 | 10.0 |" in lines[2]
    assert lines[2].endswith("| 100% | 50.0% | – | – |")
    s.extra["kv_usage_mean"] = 0.734
    assert markdown_table([("rr", s)]).strip().splitlines()[2].endswith("| 50.0% | 0.73 | – |")
    s.extra["late_step_share"] = 0.0123
    assert markdown_table([("rr", s)]).strip().endswith("| 50.0% | 0.73 | 1.2% |")


def test_write_all_produces_json_markdown_and_plots(tmp_path):
    recs = _records()
    run = RunReport(
        "rr",
        summarize(recs),
        recs,
        [(0.0, [1.0, 2.0]), (1.0, [2.0, 0.0])],
        ["e0", "e1"],
        {"command": "x"},
    )
    md = write_all(tmp_path, [run], "t")
    assert md.read_text().count("| rr |") == 1
    data = json.loads((tmp_path / "t.json").read_text())
    assert data[0]["label"] == "rr" and len(data[0]["records"]) == 20
    assert data[0]["summary"]["ok"] == 20
    for png in ("t-ttft.png", "t-throughput.png", "t-load-rr.png"):
        path = tmp_path / png
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:4] == b"\x89PNG"
