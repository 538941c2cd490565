"""Scheduling through the engine: token budget, chunked prefill, max_num_seqs, preemption, abort."""

from __future__ import annotations

import pytest

from sluice.sim.engine import (
    Engine,
    EngineConfig,
    RequestOutput,
    SamplingParams,
    SimRequest,
    StepOutput,
)
from sluice.sim.tokenizer import WordTokenizer, text_of_length

TOK = WordTokenizer()


def prompt(n: int, seed: int = 0) -> list[int]:
    return TOK.encode(text_of_length(n, seed))


def fixed(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True)


def drain(engine: Engine) -> tuple[list[StepOutput], dict[str, list[RequestOutput]]]:
    steps: list[StepOutput] = []
    by_request: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished():
        step = engine.step()
        steps.append(step)
        for out in step.outputs:
            by_request.setdefault(out.request_id, []).append(out)
    return steps, by_request


def test_long_prompt_is_prefilled_in_chunks_under_the_token_budget() -> None:
    engine = Engine(EngineConfig(max_num_batched_tokens=512, api_overhead_s=0.0))
    engine.add_request(SimRequest("long", prompt(2000), fixed(3)))
    steps, outs = drain(engine)
    assert [s.num_scheduled_tokens for s in steps] == [512, 512, 512, 464, 1, 1]
    assert [len(s.outputs) for s in steps] == [0, 0, 0, 1, 1, 1]
    lm = engine.latency
    chunks = sum(
        lm.prefill_time(n, cached=c) for c, n in [(0, 512), (512, 512), (1024, 512), (1536, 464)]
    )
    ttft = outs["long"][0].timing.first_token - outs["long"][0].timing.arrival
    assert ttft == pytest.approx(chunks)
    # Each chunk streams the weights again and re-reads the KV before it: dearer than one step.
    assert ttft > 1.1 * lm.prefill_time(2000)


def test_api_overhead_delays_scheduling_and_counts_in_ttft() -> None:
    engine = Engine(EngineConfig(api_overhead_s=0.012))
    engine.add_request(SimRequest("a", prompt(256), fixed(2)))
    first = engine.step()  # idles 12 ms, then prefills
    out = first.outputs[0]
    assert out.timing.first_scheduled == pytest.approx(0.012)
    assert first.duration == pytest.approx(0.012 + engine.latency.prefill_time(256))
    assert out.timing.first_token - out.timing.arrival == pytest.approx(first.duration)


def test_running_decodes_keep_their_token_when_a_long_prompt_arrives() -> None:
    engine = Engine(EngineConfig(max_num_batched_tokens=256, api_overhead_s=0.0))
    engine.add_request(SimRequest("decoder", prompt(32), fixed(20)))
    engine.step()
    engine.add_request(SimRequest("long", prompt(1000, seed=1), fixed(1)))
    for _ in range(3):
        step = engine.step()
        assert step.num_scheduled_tokens == 256  # 1 decode + 255 prefill
        assert [o.request_id for o in step.outputs] == ["decoder"]


def test_max_num_seqs_caps_the_running_set() -> None:
    engine = Engine(EngineConfig(max_num_seqs=3, api_overhead_s=0.0))
    for i in range(5):
        engine.add_request(SimRequest(f"r{i}", prompt(64, seed=i), fixed(10)))
    step = engine.step()
    assert step.num_batched_requests == 3
    assert engine.stats.num_running == 3 and engine.stats.num_waiting == 2
    _, outs = drain(engine)
    assert all(outs[f"r{i}"][-1].finish_reason == "length" for i in range(5))


def test_preemption_when_blocks_run_out_and_victims_recompute_to_the_same_answer() -> None:
    sampling = fixed(100)
    roomy = Engine(EngineConfig(num_gpu_blocks=200, api_overhead_s=0.0))
    tight = Engine(EngineConfig(num_gpu_blocks=24, api_overhead_s=0.0))  # 23 usable = 368 tokens
    for engine in (roomy, tight):
        for i in range(3):  # each grows to 180 tokens = 12 blocks: 36 > 23
            engine.add_request(SimRequest(f"r{i}", prompt(80, seed=i), sampling))
    _, calm = drain(roomy)
    _, stressed = drain(tight)
    assert roomy.stats.num_preemptions_total == 0
    assert tight.stats.num_preemptions_total > 0
    for rid, outs in stressed.items():
        tokens = [t for o in outs for t in o.new_token_ids]
        assert tokens == [t for o in calm[rid] for t in o.new_token_ids]
        assert len(tokens) == 100 and outs[-1].finish_reason == "length"
    # FCFS victims are the newest: the oldest request is never preempted, so it finishes first.
    finish = {rid: outs[-1].timing.finished for rid, outs in stressed.items()}
    assert min(finish, key=finish.__getitem__) == "r0"
    assert tight.stats.prefix_cache_queries_total == 3 * 80  # re-admissions are not queries
    assert tight.pool.num_free == 23


def test_priority_policy_orders_waiting_and_preempts_the_least_important() -> None:
    engine = Engine(
        EngineConfig(
            num_gpu_blocks=24, scheduling_policy="priority", max_num_seqs=2, api_overhead_s=0.0
        )
    )
    engine.add_request(SimRequest("low", prompt(80, 0), fixed(100), priority=5))
    engine.add_request(SimRequest("high", prompt(80, 1), fixed(100), priority=0))
    engine.add_request(SimRequest("mid", prompt(80, 2), fixed(100), priority=1))
    first = engine.step()
    assert {o.request_id for o in first.outputs} == {
        "high",
        "mid",
    }  # "low" waits despite arriving first
    _, outs = drain(engine)
    finish = {rid: o[-1].timing.finished for rid, o in outs.items()}
    assert finish["high"] < finish["mid"] < finish["low"]


def test_priority_preemption_picks_the_largest_priority_value() -> None:
    engine = Engine(
        EngineConfig(num_gpu_blocks=24, scheduling_policy="priority", api_overhead_s=0.0)
    )
    engine.add_request(SimRequest("a", prompt(80, 0), fixed(140), priority=0))
    engine.add_request(SimRequest("b", prompt(80, 1), fixed(140), priority=9))
    engine.add_request(SimRequest("c", prompt(80, 2), fixed(140), priority=1))
    _, outs = drain(engine)
    assert engine.stats.num_preemptions_total > 0
    finish = {rid: o[-1].timing.finished for rid, o in outs.items()}
    assert finish["b"] == max(finish.values())


def test_abort_frees_blocks_at_once_and_reports_in_the_next_step() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=100, api_overhead_s=0.0))
    engine.add_request(SimRequest("a", prompt(300), fixed(50)))
    engine.add_request(SimRequest("w", prompt(10, 1), fixed(5), arrival_time=5.0))  # not yet in
    engine.step()
    assert engine.pool.num_free < 99
    engine.abort("a")
    assert engine.pool.num_free == 99 and engine.stats.kv_cache_usage == 0.0
    engine.abort("w")
    engine.abort("unknown")  # no-op
    step = engine.step()
    assert [(o.request_id, o.finish_reason, o.finished) for o in step.outputs] == [
        ("a", "abort", True),
        ("w", "abort", True),
    ]
    assert engine.stats.request_success_total["abort"] == 2
    assert not engine.has_unfinished()
    assert engine.step().outputs == []


def test_abort_of_a_waiting_request_under_priority_policy() -> None:
    engine = Engine(EngineConfig(max_num_seqs=1, scheduling_policy="priority", api_overhead_s=0.0))
    engine.add_request(SimRequest("a", prompt(20), fixed(5)))
    engine.add_request(SimRequest("b", prompt(20, 1), fixed(5)))
    engine.step()
    engine.abort("b")
    _, outs = drain(engine)
    assert outs["a"][-1].finish_reason == "length"
    assert [(o.finish_reason, o.new_token_ids) for o in outs["b"]] == [("abort", [])]


def test_defaults_follow_vllm_per_gpu() -> None:
    h100 = Engine(EngineConfig(gpu="h100")).config
    assert (h100.max_num_seqs, h100.max_num_batched_tokens, h100.max_model_len) == (
        1024,
        8192,
        131072,
    )
    a100 = Engine(EngineConfig(gpu="a100-80gb")).config
    assert (a100.max_num_seqs, a100.max_num_batched_tokens) == (256, 2048)
    a10 = Engine(EngineConfig(gpu="a10")).config
    assert a10.max_model_len == (a10.num_gpu_blocks - 1) * 16  # capped by the KV capacity
    with pytest.raises(ValueError, match="larger than the maximum number of tokens"):
        Engine(EngineConfig(gpu="a10", max_model_len=131072))


def test_max_loras_keeps_a_request_for_another_adapter_waiting_but_not_others() -> None:
    engine = Engine(EngineConfig(max_loras=1, api_overhead_s=0.0))
    engine.add_request(SimRequest("a", prompt(32, 0), fixed(5), lora_name="adapter-a"))
    engine.add_request(SimRequest("b", prompt(32, 1), fixed(5), lora_name="adapter-b"))
    engine.add_request(SimRequest("a2", prompt(32, 2), fixed(5), lora_name="adapter-a"))
    engine.add_request(SimRequest("base", prompt(32, 3), fixed(5)))
    first = engine.step()
    assert [o.request_id for o in first.outputs] == ["a", "a2", "base"]
    _, outs = drain(engine)
    assert outs["b"][0].timing.first_scheduled >= outs["a"][-1].timing.finished
    assert all(o[-1].finish_reason == "length" for o in outs.values())
