"""Roofline step-time model: how long one batched engine step takes on a (GPU, model) profile.

Every request in a step shares its duration (continuous batching). With T tokens scheduled and C
context tokens read (reference §5)::

    t_mem  = (W/TP + k·C/TP) / (η_m·B)                      weights + KV cache streamed once
    t_cmp  = (2·P_mm·T + 4·L·H·d_h·Σ T_i·(c_i + T_i/2)) / (TP·η_f·F)   matmuls + attention
    t_step = t_cpu + sqrt(t_mem² + t_cmp²) + 2·L·t_allreduce·[TP > 1]

The L2 "soft max" tracks measured kernels near the memory/compute ridge far better than ``max``
(too low) or a sum (too high).
"""

from __future__ import annotations

from math import sqrt

from sluice.sim.profiles import Calibration, GpuProfile, ModelProfile


class LatencyModel:
    __slots__ = ("_attn_s", "_fixed_s", "_kv_s", "_matmul_s", "_weights_s", "calibration")

    def __init__(
        self,
        gpu: GpuProfile,
        model: ModelProfile,
        tensor_parallel: int = 1,
        calibration: Calibration | None = None,
    ) -> None:
        cal = calibration or Calibration()
        tp = tensor_parallel
        bandwidth = cal.eta_mem * gpu.hbm_bandwidth
        flops = tp * cal.eta_flops * gpu.flops
        self.calibration = cal
        # Seconds per unit, folded once so a step costs a few multiplications.
        self._weights_s = model.weight_bytes / tp / bandwidth
        self._kv_s = model.kv_bytes_per_token / tp / bandwidth
        self._matmul_s = 2.0 * model.matmul_params / flops
        self._attn_s = 4.0 * model.num_layers * model.num_heads * model.head_dim / flops
        allreduce = 2 * model.num_layers * cal.t_allreduce if tp > 1 else 0.0
        self._fixed_s = cal.t_cpu + allreduce

    def step_time(self, num_tokens: int, context_tokens: int, attention_work: float) -> float:
        """Seconds for one step.

        ``num_tokens``: T, tokens computed (1 per decode plus prefill chunk sizes);
        ``context_tokens``: C, KV entries read, i.e. Σ (c_i + T_i) over scheduled requests;
        ``attention_work``: Σ T_i·(c_i + T_i/2), the causal attention's query-key pairs.
        """
        t_mem = self._weights_s + self._kv_s * context_tokens
        t_cmp = self._matmul_s * num_tokens + self._attn_s * attention_work
        return self._fixed_s + sqrt(t_mem * t_mem + t_cmp * t_cmp)

    def decode_time(self, batch: int, context: int) -> float:
        """A pure decode step: ``batch`` requests each with ``context`` tokens already computed."""
        return self.step_time(batch, batch * (context + 1), batch * (context + 0.5))

    def prefill_time(self, num_tokens: int, cached: int = 0) -> float:
        """One step prefilling ``num_tokens`` new tokens after ``cached`` tokens already in KV."""
        work = num_tokens * (cached + num_tokens / 2)
        return self.step_time(num_tokens, cached + num_tokens, work)

    def decode_ends(
        self, now: float, batch: int, context: int, steps: int, until: float
    ) -> tuple[list[float], list[float]]:
        """Clock after each of up to ``steps`` pure decode steps of ``batch`` requests, and each
        step's duration; stops before a step that would begin at or after ``until``.

        ``context`` is Σ computed tokens before the first step; each step adds ``batch``. Every
        duration is ``step_time(batch, context + batch, (2·context + batch)/2)`` computed with the
        same operations in the same order, and the clock adds them one by one, so the ends are
        bit-identical to stepping (``Engine._step_decodes``).
        """
        weights, kv, attn, fixed = self._weights_s, self._kv_s, self._attn_s, self._fixed_s
        root = sqrt  # locals: this loop runs once per simulated decode step
        ends: list[float] = []
        busy: list[float] = []
        end, spent = ends.append, busy.append
        t_tok = self._matmul_s * batch
        for _ in range(steps):
            if now >= until:
                break
            t_mem = weights + kv * (context + batch)
            t_cmp = t_tok + attn * ((2 * context + batch) * 0.5)
            b = fixed + root(t_mem * t_mem + t_cmp * t_cmp)
            now += b
            end(now)
            spent(b)
            context += batch
        return ends, busy
