"""Long-document QA with repeated documents (production-stack / LMCache long-doc QA style).

``num_documents`` documents of ``document_len`` tokens; each is asked ``questions_per_document``
times. The order is a first pass over all documents, then the remaining questions shuffled: a
cache big enough to hold the documents turns every repeat into a hit, a small one thrashes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sluice.bench.arrivals import make_arrivals
from sluice.bench.workloads.base import (
    DEFAULT_SPACE,
    TokenSpace,
    WorkloadRequest,
    content_key,
    tokens,
)


@dataclass(frozen=True, slots=True)
class LongDocQAConfig:
    num_documents: int = 20
    document_len: int = 10000
    questions_per_document: int = 4
    question_len: int = 64
    output_len: int = 100
    rate: float = 2.0
    arrival_process: str = "poisson"
    seed: int = 0


def long_doc_qa(cfg: LongDocQAConfig, space: TokenSpace = DEFAULT_SPACE) -> list[WorkloadRequest]:
    rng = random.Random(cfg.seed)
    first = [(d, 0) for d in range(cfg.num_documents)]
    rest = [(d, q) for d in range(cfg.num_documents) for q in range(1, cfg.questions_per_document)]
    rng.shuffle(rest)
    order = first + rest
    times = make_arrivals(cfg.arrival_process, cfg.rate, len(order), seed=cfg.seed + 1)
    docs = {
        d: tokens(cfg.seed, content_key("doc", d), cfg.document_len, space)
        for d in range(cfg.num_documents)
    }
    return [
        WorkloadRequest(
            request_id=f"ld-d{d}-q{q}",
            arrival=t,
            prompt=docs[d] + tokens(cfg.seed, content_key("q", d, q), cfg.question_len, space),
            max_tokens=cfg.output_len,
            session_id=f"doc-{d}",
        )
        for (d, q), t in zip(order, times, strict=True)
    ]
