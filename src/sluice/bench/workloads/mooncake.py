"""Mooncake trace replay: each hash id becomes a deterministic 512-token block.

The trace (FAST'25, Apache-2.0) has one JSON object per line: ``timestamp`` (ms), ``input_length``,
``output_length`` and ``hash_ids`` of the prompt's 512-token blocks; equal ids are equal content,
so requests that share leading ids share a prompt prefix. The last block is cut so the prompt has
exactly ``input_length`` tokens.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sluice.bench.workloads.base import DEFAULT_SPACE, TokenSpace, WorkloadRequest, blocks_tokens

MOONCAKE_BLOCK = 512
DEFAULT_TRACE = Path("../shared/traces/mooncake_conversation.jsonl")


@dataclass(frozen=True, slots=True)
class TraceRow:
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def read_trace(path: str | Path = DEFAULT_TRACE) -> list[TraceRow]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            rows.append(
                TraceRow(
                    float(obj["timestamp"]),
                    int(obj["input_length"]),
                    int(obj["output_length"]),
                    tuple(int(h) for h in obj["hash_ids"]),
                )
            )
    return rows


def prompt_for(
    row: TraceRow, seed: int = 0, space: TokenSpace = DEFAULT_SPACE, id_offset: int = 0
) -> array[int]:
    """The prompt of one trace row: its blocks' tokens, cut to ``input_length``.

    An ``array('I')``, not a list: a 14k-token prompt is then built, copied and hashed without
    creating 14k Python ints (the cluster simulator builds a million of them).
    """
    needed = -(-row.input_length // MOONCAKE_BLOCK)
    if needed > len(row.hash_ids):
        raise ValueError(
            f"trace row has {len(row.hash_ids)} blocks for {row.input_length} input tokens"
        )
    out = array("I")
    if needed:
        keys = [h + id_offset for h in row.hash_ids[:needed]]
        ids = blocks_tokens(seed, keys, MOONCAKE_BLOCK, space).reshape(-1)[: row.input_length]
        out.frombytes(ids.astype(np.uint32).tobytes())
    return out


def mooncake(
    rows: list[TraceRow],
    *,
    speedup: float = 1.0,
    offset: int = 0,
    limit: int | None = None,
    repeat: int = 1,
    max_output: int | None = None,
    seed: int = 0,
    space: TokenSpace = DEFAULT_SPACE,
) -> Iterator[WorkloadRequest]:
    """Replay ``rows[offset:offset+limit]`` with trace timing divided by ``speedup``.

    ``repeat`` > 1 lays ``repeat`` copies side by side in time, each with its own hash-id range
    (new content, same shape): a ``repeat``-times larger trace for scale runs. Prompts are built
    lazily, so a million-request replay does not hold its prompts in memory.
    """
    if speedup <= 0:
        raise ValueError("speedup must be positive")
    chosen = rows[offset : None if limit is None else offset + limit]
    if not chosen:
        return
    t0 = chosen[0].timestamp_ms
    span = 1 + max(max(r.hash_ids, default=0) for r in chosen)
    order = sorted(
        ((r.timestamp_ms, copy, i) for copy in range(repeat) for i, r in enumerate(chosen)),
    )
    for ts, copy, i in order:
        row = chosen[i]
        out = row.output_length if max_output is None else min(row.output_length, max_output)
        yield WorkloadRequest(
            request_id=f"mc-{copy}-{offset + i}",
            arrival=(ts - t0) / 1000.0 / speedup,
            prompt=prompt_for(row, seed, space, copy * span),
            max_tokens=max(1, out),
            block_ids=tuple(h + copy * span for h in row.hash_ids),
        )
