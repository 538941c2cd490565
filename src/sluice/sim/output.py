"""What a simulated request generates: deterministic filler tokens and when they end.

Every choice is a pure function of ``(seed, request_id)``, so a rerun reproduces each answer token
for token. Without ``ignore_eos`` a request has a "natural" length, drawn log-normally (median 128
tokens, heavy tail like ShareGPT answers), at which it emits EOS and finishes with "stop";
``max_tokens`` caps it with "length"; ``min_tokens`` defers EOS.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from math import exp
from statistics import NormalDist

NATURAL_LENGTH_MEDIAN = 128
NATURAL_LENGTH_SIGMA = 0.9
FILLER_STEP = 7919  # a prime: consecutive filler tokens walk the vocabulary without short cycles
_STANDARD_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """``length`` output tokens, the last one EOS when ``reason`` is "stop" by EOS."""

    length: int
    reason: str  # "stop" | "length"
    eos_last: bool
    filler_base: int


class OutputPlanner:
    def __init__(self, seed: int, filler_ids: range, eos_token_id: int | None) -> None:
        self.seed = seed
        self.filler_start = filler_ids.start
        self.filler_span = len(filler_ids)
        self.eos_token_id = eos_token_id

    def _draw(self, kind: str, request_id: str) -> int:
        """64 random bits, a pure function of (seed, kind, request id) in every process."""
        key = f"{self.seed}:{kind}:{request_id}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")

    def natural_length(self, request_id: str) -> int:
        uniform = ((self._draw("len", request_id) >> 11) + 0.5) / 2**53  # in (0, 1)
        z = _STANDARD_NORMAL.inv_cdf(uniform)
        return max(1, round(exp(NATURAL_LENGTH_SIGMA * z) * NATURAL_LENGTH_MEDIAN))

    def plan(
        self, request_id: str, max_tokens: int, min_tokens: int, ignore_eos: bool
    ) -> OutputPlan:
        base = self._draw("tok", request_id) % self.filler_span
        if ignore_eos or self.eos_token_id is None:
            return OutputPlan(max_tokens, "length", False, base)
        natural = max(self.natural_length(request_id), min_tokens)
        if natural >= max_tokens:
            return OutputPlan(max_tokens, "length", False, base)
        return OutputPlan(natural, "stop", True, base)

    def token(self, base: int, index: int) -> int:
        """The ``index``-th filler token (0-based) of a request whose plan has ``base``."""
        return self.filler_start + (base + index * FILLER_STEP) % self.filler_span
