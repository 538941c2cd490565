"""GPU and model profiles for the latency model, and vLLM-like KV capacity.

Figures are dense BF16 peaks and public model configs (reference: vllm-engine-facts §5). GPU
memory is in GiB, as ``nvidia-smi`` and vLLM's profiler count it; weights are in decimal bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

GIB = 1024**3

_P = TypeVar("_P")


@dataclass(frozen=True, slots=True)
class GpuProfile:
    name: str
    flops: float  # dense BF16 peak, FLOP/s
    hbm_bandwidth: float  # bytes/s
    memory_bytes: int

    @property
    def large_batch_defaults(self) -> bool:
        """vLLM gives GPUs with >= 70 GiB that are not A100s the big batch defaults."""
        return self.memory_bytes >= 70 * GIB and not self.name.startswith("a100")


@dataclass(frozen=True, slots=True)
class ModelProfile:
    name: str
    hf_name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    weight_bytes: float  # BF16 weights
    matmul_params: float  # non-embedding layers plus the LM head: what each token multiplies
    max_context: int
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True, slots=True)
class Calibration:
    """Efficiencies and fixed costs; defaults are the reference's calibrated values."""

    eta_mem: float = 0.8  # achieved fraction of HBM bandwidth
    eta_flops: float = 0.7  # achieved fraction of peak FLOP/s
    t_cpu: float = 0.5e-3  # per-step scheduler + launch overhead (vLLM V1, CUDA graphs)
    t_allreduce: float = 15.6e-6  # per all-reduce at decode sizes on NVLink (2 per layer)
    # Front-end time before the engine core sees a request (HTTP parse, chat template, tokenize):
    # the reference puts it at 5-15 ms; it is part of TTFT, not of any engine step.
    api_overhead: float = 0.010
    # Activations, CUDA graphs and allocator slack that vLLM's profiler keeps out of the KV cache.
    activation_overhead_bytes: float = 3e9


GPUS: dict[str, GpuProfile] = {
    g.name: g
    for g in (
        GpuProfile("h100", 989e12, 3.35e12, 80 * GIB),
        GpuProfile("h200", 989e12, 4.8e12, 141 * GIB),
        GpuProfile("a100-80gb", 312e12, 2.039e12, 80 * GIB),
        GpuProfile("a100-40gb", 312e12, 1.555e12, 40 * GIB),
        GpuProfile("l40s", 362e12, 0.864e12, 48 * GIB),
        GpuProfile("a10", 125e12, 0.6e12, 24 * GIB),
    )
}

# Embedding tables do no matmul work per token: Llama-3.1 has a 128256-entry vocabulary
# (0.53 B params at 8B, 1.05 B at 70B); Qwen2.5-7B has 152064 entries of width 3584 (0.54 B).
MODELS: dict[str, ModelProfile] = {
    m.name: m
    for m in (
        ModelProfile(
            "llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 32, 32, 8, 128,
            16.06e9, 7.50e9, 131072,
        ),
        ModelProfile(
            "qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", 28, 28, 4, 128,
            15.2e9, 7.07e9, 32768,
        ),
        ModelProfile(
            "llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct", 80, 64, 8, 128,
            141e9, 69.5e9, 131072,
        ),
    )
}  # fmt: skip


def _lookup(table: dict[str, _P], kind: str, name: str) -> _P:
    try:
        return table[name.strip().lower()]
    except KeyError:
        known = ", ".join(table)
        raise ValueError(f"unknown {kind} {name!r}; known: {known}") from None


def get_gpu(name: str) -> GpuProfile:
    return _lookup(GPUS, "GPU", name)


def get_model(name: str) -> ModelProfile:
    return _lookup(MODELS, "model", name)


def num_gpu_blocks_for(
    gpu: GpuProfile,
    model: ModelProfile,
    tensor_parallel: int = 1,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    calibration: Calibration | None = None,
) -> int:
    """KV blocks per engine as vLLM's profiler sizes them.

    Each GPU holds ``1/TP`` of the weights and ``1/TP`` of every block (KV heads are split), so a
    block costs ``block_size * kv_bytes_per_token / TP`` on each GPU.
    """
    cal = calibration or Calibration()
    budget = (
        gpu.memory_bytes * gpu_memory_utilization
        - model.weight_bytes / tensor_parallel
        - cal.activation_overhead_bytes
    )
    per_block = block_size * model.kv_bytes_per_token / tensor_parallel
    blocks = int(budget // per_block)
    if blocks <= 1:
        raise ValueError(
            f"{model.name} does not fit on {gpu.name} with tensor_parallel={tensor_parallel} "
            f"and gpu_memory_utilization={gpu_memory_utilization}: no memory left for KV cache"
        )
    return blocks
