import itertools
import json
import math
from pathlib import Path

import pytest

from sluice.bench.workloads import (
    MOONCAKE_BLOCK,
    LongDocQAConfig,
    MultiTurnConfig,
    RandomConfig,
    SharedPrefixConfig,
    TokenSpace,
    TraceRow,
    build_workload,
    long_doc_qa,
    mooncake,
    multi_turn,
    random_control,
    read_trace,
    shared_prefix,
)
from sluice.bench.workloads.registry import parse_options


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


ROWS = [
    TraceRow(0, 1200, 10, (0, 1, 2)),
    TraceRow(0, 1100, 5, (0, 1, 3)),
    TraceRow(1500, 512, 7, (4,)),
    TraceRow(3000, 700, 3, (0, 5)),
]


def test_mooncake_exact_lengths_and_timing():
    reqs = list(mooncake(ROWS, speedup=2.0))
    assert [r.prompt_tokens for r in reqs] == [1200, 1100, 512, 700]
    assert [r.max_tokens for r in reqs] == [10, 5, 7, 3]
    assert [r.arrival for r in reqs] == [0.0, 0.0, 0.75, 1.5]


def test_mooncake_prefix_sharing_matches_hash_ids():
    reqs = list(mooncake(ROWS))
    by_id = {r.block_ids: r.prompt for r in reqs}
    a, b, c, d = (by_id[row.hash_ids] for row in ROWS)
    # rows 0 and 1 share ids (0, 1) -> exactly 1024 shared tokens, then differ
    assert common_prefix(a, b) == 2 * MOONCAKE_BLOCK
    assert common_prefix(a, d) == MOONCAKE_BLOCK
    assert common_prefix(a, c) < 4  # unrelated content: no shared block
    # a block's content depends on its id only, wherever it appears
    assert a[:MOONCAKE_BLOCK] == d[:MOONCAKE_BLOCK]


def test_mooncake_partial_last_block_is_a_prefix_of_the_full_block():
    rows = [TraceRow(0, 600, 1, (7, 8)), TraceRow(0, 1024, 1, (7, 8))]
    short, full = (r.prompt for r in mooncake(rows))
    assert full[: len(short)] == short


def test_mooncake_subset_repeat_and_seed():
    sub = list(mooncake(ROWS, offset=1, limit=2))
    assert [r.request_id for r in sub] == ["mc-0-1", "mc-0-2"]
    assert sub[0].arrival == 0.0 and sub[1].arrival == 1.5
    rep = list(mooncake(ROWS, repeat=2))
    assert len(rep) == 8
    copies = [r for r in rep if r.request_id.endswith("-0")]
    assert common_prefix(copies[0].prompt, copies[1].prompt) < 4  # copies get new content
    other = list(mooncake(ROWS, seed=1))
    assert other[0].prompt != next(iter(mooncake(ROWS))).prompt


def test_mooncake_rejects_rows_with_too_few_blocks():
    with pytest.raises(ValueError):
        list(mooncake([TraceRow(0, 2000, 1, (1, 2))]))


def test_tokens_stay_in_space():
    space = TokenSpace(50, 60)
    (req,) = mooncake([TraceRow(0, 900, 1, (3, 4))], space=space)
    assert min(req.prompt) >= 50 and max(req.prompt) < 60


def test_real_trace_first_rows(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [
        {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": list(range(14))},
        {"timestamp": 5, "input_length": 600, "output_length": 9, "hash_ids": [0, 99]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rows = read_trace(path)
    assert rows[0].hash_ids == tuple(range(14)) and rows[1].timestamp_ms == 5
    reqs = list(build_workload("mooncake", {"speedup": "0.5"}, trace=path))
    assert reqs[1].arrival == pytest.approx(0.01)
    assert common_prefix(reqs[0].prompt, reqs[1].prompt) == MOONCAKE_BLOCK


def test_multi_turn_history_grows_and_shares_prefixes():
    cfg = MultiTurnConfig(users=3, rounds=4, system_prompt_len=100, first_prompt_len=50, seed=3)
    reqs = multi_turn(cfg)
    assert len(reqs) == 12
    by_user: dict[str, list] = {}
    for r in reqs:
        by_user.setdefault(r.session_id, []).append(r)
    for rounds in by_user.values():
        assert [r.depends_on for r in rounds] == [None] + [r.request_id for r in rounds[:-1]]
        assert rounds[0].think_time == 0 and rounds[1].think_time == cfg.think_time
        for prev, cur in itertools.pairwise(rounds):
            # the next round's prompt is the previous prompt + answer + a new question
            assert cur.prompt[: prev.prompt_tokens] == prev.prompt
            added = cur.prompt_tokens - prev.prompt_tokens - prev.max_tokens
            assert cfg.question_len[0] <= added <= cfg.question_len[1]
    firsts = [rounds[0] for rounds in by_user.values()]
    assert common_prefix(firsts[0].prompt, firsts[1].prompt) == 100  # the system prompt
    assert multi_turn(cfg)[5].prompt == reqs[5].prompt  # reproducible


def test_shared_prefix_groups():
    cfg = SharedPrefixConfig(
        num_groups=3,
        prompts_per_group=4,
        system_prompt_len=64,
        question_len=16,
        output_len=8,
        rate=10,
    )
    reqs = shared_prefix(cfg)
    assert len(reqs) == 12 and all(r.prompt_tokens == 80 for r in reqs)
    assert all(r.max_tokens == 8 for r in reqs)
    for a in reqs:
        for b in reqs:
            if a is b:
                continue
            shared = common_prefix(a.prompt, b.prompt)
            assert (shared >= 64) == (a.session_id == b.session_id)
            assert shared < 64 + 16
    assert [r.arrival for r in reqs] == sorted(r.arrival for r in reqs)


def test_long_doc_qa_first_pass_then_repeats():
    cfg = LongDocQAConfig(
        num_documents=3, document_len=200, questions_per_document=3, question_len=10, output_len=5
    )
    reqs = long_doc_qa(cfg)
    assert len(reqs) == 9
    assert [r.session_id for r in reqs[:3]] == ["doc-0", "doc-1", "doc-2"]
    assert all(r.prompt_tokens == 210 for r in reqs)
    docs = {r.session_id: r.prompt[:200] for r in reqs[:3]}
    assert all(r.prompt[:200] == docs[r.session_id] for r in reqs)


def test_random_control_has_no_reuse_and_exact_lengths():
    reqs = random_control(RandomConfig(num_requests=50, input_len=100, output_len=20, rate=5))
    assert all(r.prompt_tokens == 100 and r.max_tokens == 20 for r in reqs)
    heads = {tuple(r.prompt[:16]) for r in reqs}
    assert len(heads) == 50
    ranged = random_control(RandomConfig(num_requests=200, input_len=100, range_ratio=0.5))
    lengths = [r.prompt_tokens for r in ranged]
    assert min(lengths) >= 50 and max(lengths) <= 150 and len(set(lengths)) > 20


def test_registry_builds_by_name_with_typed_options():
    reqs = build_workload(
        "multi_turn", parse_options(["users=2", "rounds=3", "question-len=5,6", "think_time=0.5"])
    )
    assert len(reqs) == 6 and reqs[1].think_time in (0.0, 0.5)
    with pytest.raises(ValueError):
        build_workload("multi_turn", {"bogus": "1"})
    with pytest.raises(ValueError):
        build_workload("nope")


def test_arrival_rate_of_generated_workload():
    reqs = random_control(RandomConfig(num_requests=2000, input_len=4, output_len=1, rate=20))
    span = reqs[-1].arrival
    assert math.isclose(len(reqs) / span, 20, rel_tol=0.1)


REAL_TRACE = Path(__file__).resolve().parents[2] / "../shared/traces/mooncake_conversation.jsonl"


@pytest.mark.skipif(not REAL_TRACE.exists(), reason="the Mooncake trace is not next to the repo")
def test_real_trace_prefix_sharing_matches_hash_ids():
    rows = read_trace(REAL_TRACE)[:120]
    reqs = list(mooncake(rows))
    assert [r.prompt_tokens for r in reqs] == [row.input_length for row in rows]
    for i in range(0, 120, 7):
        for j in range(i + 1, 120, 5):
            a, b = reqs[i], reqs[j]
            shared_ids = common_prefix(a.block_ids, b.block_ids)
            tokens = common_prefix(a.prompt, b.prompt)
            full = min(a.prompt_tokens, b.prompt_tokens)
            if shared_ids * MOONCAKE_BLOCK >= full:
                assert tokens == full
            else:
                # shared ids give exactly their 512 tokens each (a chance match of a few more
                # tokens is possible, a whole extra block is not)
                assert shared_ids * MOONCAKE_BLOCK <= tokens < shared_ids * MOONCAKE_BLOCK + 16
