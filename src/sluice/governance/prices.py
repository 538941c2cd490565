"""Prices per model and the cost of one request. PURE."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_PER = 1_000_000


class Prices(BaseModel):
    """USD per million tokens; optionally a GPU-hour price attributed by tokens.

    ``gpu_hour_usd`` with ``gpu_tokens_per_hour`` (the tokens one GPU-hour serves, measured)
    adds ``gpu_hour_usd * tokens / gpu_tokens_per_hour`` to every request.
    """

    model_config = ConfigDict(extra="forbid")

    input_per_m: float = Field(0.0, ge=0)
    output_per_m: float = Field(0.0, ge=0)
    cached_per_m: float | None = Field(None, ge=0)  # default: the input price
    gpu_hour_usd: float | None = Field(None, ge=0)
    gpu_tokens_per_hour: float | None = Field(None, gt=0)


def cost(prices: Prices | None, prompt: int, completion: int, cached: int = 0) -> float:
    """USD for one request. Cached prompt tokens are charged at the cached price."""
    if prices is None:
        return 0.0
    cached = min(max(cached, 0), max(prompt, 0))
    uncached = max(prompt, 0) - cached
    cached_rate = prices.input_per_m if prices.cached_per_m is None else prices.cached_per_m
    usd = (
        uncached * prices.input_per_m
        + cached * cached_rate
        + max(completion, 0) * prices.output_per_m
    ) / _PER
    if prices.gpu_hour_usd is not None and prices.gpu_tokens_per_hour:
        usd += (
            prices.gpu_hour_usd
            * (max(prompt, 0) + max(completion, 0))
            / (prices.gpu_tokens_per_hour)
        )
    return usd
