"""Metric calculations over per-request records: pure functions, no clocks.

Definitions (as in ``vllm bench serve``): TTFT = first token − send time; ITL = every gap between
consecutive output tokens (streamed chunks); TPOT = (end − first token)/(output tokens − 1), one
value per request; throughput = output tokens / makespan (first send to last completion).
Goodput counts requests that meet the SLO: TTFT ≤ ``ttft`` and TPOT (the request's mean
inter-token latency) ≤ ``itl``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class RequestRecord:
    """What one request did. Times are seconds on the run's clock (simulated seconds for sims)."""

    request_id: str
    start: float
    end: float
    first_token: float | None
    prompt_tokens: int
    output_tokens: int
    endpoint: str = ""
    cached_tokens: int | None = None
    ok: bool = True
    error: str = ""
    itls: list[float] | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        if self.first_token is None or self.output_tokens < 2:
            return None
        return (self.end - self.first_token) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class SLO:
    ttft: float = 2.0
    itl: float = 0.1

    def met(self, r: RequestRecord) -> bool:
        if not r.ok or r.ttft is None or r.ttft > self.ttft:
            return False
        tpot = r.tpot
        return tpot is None or tpot <= self.itl


DEFAULT_SLO = SLO()


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class LogHistogram:
    """Weighted samples in log-spaced buckets (relative error ≤ ``precision``/2).

    For quantities with too many samples to keep (every inter-token gap of a million requests).
    """

    def __init__(self, precision: float = 0.01) -> None:
        self._log_base = math.log1p(precision)
        self._base = 1.0 + precision
        self.counts: dict[int, int] = {}
        self.zeros = 0
        self.total = 0

    def add(self, value: float, count: int = 1) -> None:
        if count <= 0:
            return
        self.total += count
        if value <= 0:
            self.zeros += count
            return
        idx = math.floor(math.log(value) / self._log_base)
        self.counts[idx] = self.counts.get(idx, 0) + count

    def add_steps(self, start: float, ends: Sequence[float], count: int) -> None:
        """``add(end - previous, count)`` for each of ``ends`` in turn, ``previous`` being
        ``start`` and then the last end: the gaps of a run of back-to-back steps.

        Consecutive steps mostly fall in the same bucket, so the logarithm is only taken for a
        gap outside the last bucket's range, shrunk by 1e-9 (far wider than the rounding of
        ``log``), so every gap lands where ``add`` would put it.
        """
        lo = hi = 0.0  # gaps in [lo, hi) belong to bucket idx
        idx = held = 0
        prev = start
        for end in ends:
            gap = end - prev
            prev = end
            if lo <= gap < hi:
                held += count
                continue
            self._hold(idx, held)
            held = 0
            if gap <= 0:
                self.add(gap, count)
                lo = hi = 0.0
                continue
            idx = math.floor(math.log(gap) / self._log_base)
            lo = self._base**idx * (1 + 1e-9)
            hi = self._base ** (idx + 1) * (1 - 1e-9)
            held = count
        self._hold(idx, held)

    def _hold(self, idx: int, count: int) -> None:
        if count:
            self.counts[idx] = self.counts.get(idx, 0) + count
            self.total += count

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def percentile(self, q: float) -> float:
        if self.total == 0:
            return math.nan
        rank = q / 100.0 * self.total
        seen = self.zeros
        if rank <= seen and self.zeros:
            return 0.0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if seen >= rank:
                return math.sqrt(self._base**idx * self._base ** (idx + 1))
        return self._base ** (max(self.counts) + 1)


@dataclass(slots=True)
class Summary:
    requests: int
    ok: int
    failed: int
    duration: float
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    ttft_mean: float
    itl_p50: float
    itl_p99: float
    tpot_p50: float
    e2e_p50: float
    e2e_p99: float
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float
    slo_attainment: float
    prefix_hit_rate: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(
    records: Sequence[RequestRecord],
    slo: SLO = DEFAULT_SLO,
    itl_hist: LogHistogram | None = None,
    prefix_hit_rate: float | None = None,
) -> Summary:
    """Aggregate records. ITL percentiles come from ``itl_hist`` if given, else records' gaps."""
    ok = [r for r in records if r.ok]
    duration = max(r.end for r in records) - min(r.start for r in records) if records else 0.0
    ttfts = [t for r in ok if (t := r.ttft) is not None]
    tpots = [t for r in ok if (t := r.tpot) is not None]
    e2es = [r.e2e for r in ok]
    if itl_hist is None:
        itl_hist = LogHistogram()
        for r in ok:
            if r.itls:
                itl_hist.extend(r.itls)
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    good = sum(1 for r in records if slo.met(r))
    rate = (lambda x: x / duration) if duration > 0 else (lambda x: math.nan)
    return Summary(
        requests=len(records),
        ok=len(ok),
        failed=len(records) - len(ok),
        duration=duration,
        ttft_p50=percentile(ttfts, 50),
        ttft_p90=percentile(ttfts, 90),
        ttft_p99=percentile(ttfts, 99),
        ttft_mean=_mean(ttfts),
        itl_p50=itl_hist.percentile(50),
        itl_p99=itl_hist.percentile(99),
        tpot_p50=percentile(tpots, 50),
        e2e_p50=percentile(e2es, 50),
        e2e_p99=percentile(e2es, 99),
        request_throughput=rate(len(ok)),
        output_throughput=rate(out_tokens),
        total_token_throughput=rate(out_tokens + in_tokens),
        goodput=rate(good),
        slo_attainment=good / len(records) if records else math.nan,
        prefix_hit_rate=prefix_hit_rate,
    )


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Per-key increase of monotonic counters; a reset (after < before) counts from zero."""
    out = {}
    for key, value in after.items():
        prev = before.get(key, 0.0)
        out[key] = value - prev if value >= prev else value
    return out


def hit_rate(queries: float, hits: float) -> float | None:
    """Prefix-cache hit rate from counter deltas (tokens), as rate(hits)/rate(queries)."""
    return hits / queries if queries > 0 else None


def throughput_series(
    records: Sequence[RequestRecord], bucket: float
) -> tuple[list[float], list[float]]:
    """Output tokens/s per time bucket from the first send; tokens spread over [first, end]."""
    ok = [r for r in records if r.ok and r.output_tokens > 0]
    if not ok or bucket <= 0:
        return [], []
    t0 = min(r.start for r in records)
    t_end = max(r.end for r in ok)
    n = max(1, math.ceil((t_end - t0) / bucket))
    sums = [0.0] * n
    for r in ok:
        a = (r.first_token if r.first_token is not None else r.end) - t0
        b = r.end - t0
        if b <= a:
            sums[min(n - 1, int(a / bucket))] += r.output_tokens
            continue
        per_s = r.output_tokens / (b - a)
        i = int(a / bucket)
        while i < n and i * bucket < b:
            lo, hi = max(a, i * bucket), min(b, (i + 1) * bucket)
            sums[i] += per_s * max(0.0, hi - lo)
            i += 1
    return [i * bucket for i in range(n)], [s / bucket for s in sums]
