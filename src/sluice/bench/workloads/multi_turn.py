"""Multi-turn chat: users x rounds, a shared system prompt, growing history, think time.

In the manner of production-stack's ``multi-round-qa``: every user starts a conversation (user
starts follow an arrival process); round ``r``'s prompt is the system prompt, then each earlier
question and answer, then question ``r``. Round ``r`` is sent ``think_time`` seconds after round
``r-1`` finished. The history holds synthetic answers of the answer's length (not what the engine
generated), so the workload is fixed in advance and identical for every router.
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
class MultiTurnConfig:
    users: int = 32
    rounds: int = 8
    system_prompt_len: int = 1000
    first_prompt_len: int = 2000  # per-user context in the first question (e.g. a document)
    question_len: tuple[int, int] = (100, 200)
    answer_len: tuple[int, int] = (100, 300)
    think_time: float = 2.0
    user_rate: float = 1.0  # user starts per second
    arrival_process: str = "poisson"
    seed: int = 0


def multi_turn(cfg: MultiTurnConfig, space: TokenSpace = DEFAULT_SPACE) -> list[WorkloadRequest]:
    rng = random.Random(cfg.seed)
    system = tokens(cfg.seed, content_key("system"), cfg.system_prompt_len, space)
    starts = make_arrivals(cfg.arrival_process, cfg.user_rate, cfg.users, seed=cfg.seed + 1)
    out: list[WorkloadRequest] = []
    for u, start in enumerate(starts):
        history = list(system)
        previous: str | None = None
        for r in range(cfg.rounds):
            q_len = rng.randint(*cfg.question_len) + (cfg.first_prompt_len if r == 0 else 0)
            a_len = rng.randint(*cfg.answer_len)
            question = tokens(cfg.seed, content_key("q", u, r), q_len, space)
            prompt = history + question
            rid = f"mt-u{u}-r{r}"
            out.append(
                WorkloadRequest(
                    request_id=rid,
                    arrival=start,
                    prompt=prompt,
                    max_tokens=a_len,
                    session_id=f"user-{u}",
                    depends_on=previous,
                    think_time=cfg.think_time if previous else 0.0,
                )
            )
            history = prompt + tokens(cfg.seed, content_key("a", u, r), a_len, space)
            previous = rid
    out.sort(key=lambda w: w.arrival)  # stable: a user's rounds stay in order
    return out
