"""The cluster simulator's view of one simulated engine (``sluice.sim.engine.Engine``)."""

from __future__ import annotations

from sluice.bench.workloads.base import WorkloadRequest
from sluice.routing.endpoint import EndpointState
from sluice.sim.engine import DecodeRun, Engine, EngineConfig
from sluice.sim.request import RequestOutput, SamplingParams, SimRequest


class EngineHandle:
    """Adds requests at a virtual time, steps, and reports what a metrics scrape would."""

    __slots__ = ("block_size", "engine", "num_blocks")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        cfg = engine.config
        self.block_size = int(getattr(cfg, "block_size", 16))
        self.num_blocks = int(getattr(engine, "num_gpu_blocks", 0) or 0)

    def add(
        self, req: WorkloadRequest, t: float, hashes: tuple[int, list[int]] | None = None
    ) -> None:
        """Raises ``sluice.sim.request.RequestError`` for a request the engine refuses.

        Workload prompts are drawn from a ``TokenSpace`` inside the vocabulary, so the engine
        skips its per-token vocabulary scan; the engine copies the prompt itself. ``hashes``:
        ``(block size, block hashes)`` a router computed for the prompt (root seed 0, no LoRA);
        the engine reuses them when they are its own, instead of hashing the prompt again.
        """
        engine = self.engine
        if not engine.has_unfinished() and t > engine.now:
            engine.advance_to(t)
        engine.add_request(
            SimRequest(
                request_id=req.request_id,
                prompt_token_ids=req.prompt,  # type: ignore[arg-type]
                sampling=SamplingParams(max_tokens=req.max_tokens, ignore_eos=True),
                arrival_time=t,
            ),
            check_ids=False,
            block_hashes=self._own(hashes),
        )

    def _own(self, hashes: tuple[int, list[int]] | None) -> list[int] | None:
        """``hashes`` if this engine would compute the very same ones, else None."""
        if hashes is None:
            return None
        cfg = self.engine.config
        block_size, values = hashes
        same = block_size == self.block_size and cfg.seed == 0 and cfg.enable_prefix_caching
        return values if same else None

    def step(self, t: float) -> tuple[float, list[RequestOutput]]:
        """One step begun at ``t``: when it ends (the engine's clock) and what it produced."""
        engine = self.engine
        if engine.now < t:
            engine.advance_to(t)
        out = engine.step()
        return engine.now, out.outputs

    def plan_run(self, t: float) -> DecodeRun | None:
        """The pure-decode steps ahead from ``t`` (at least two), without taking them."""
        engine = self.engine
        if engine.now < t:
            engine.advance_to(t)
        return engine.plan_decode_run()

    def advance(self, run: DecodeRun, steps: int) -> None:
        self.engine.advance_decode_run(run, steps)

    def kv_usage_after(self, run: DecodeRun, steps: int) -> float:
        """What a scrape after ``steps`` steps of ``run`` reads (``BlockPool.usage``'s formula)."""
        free = run.free0 - run.blocks_allocated(steps)
        return 1.0 - free / (self.num_blocks - 1)

    def has_work(self) -> bool:
        return self.engine.has_unfinished()

    def refresh(self, state: EndpointState) -> None:
        stats = self.engine.stats
        state.running = stats.num_running
        state.waiting = stats.num_waiting
        state.kv_usage = stats.kv_cache_usage
        state.block_size = self.block_size
        state.num_blocks = self.num_blocks

    def prefix_counters(self) -> tuple[int, int]:
        stats = self.engine.stats
        return stats.prefix_cache_queries_total, stats.prefix_cache_hits_total


def make_engines(count: int, config: object | None = None) -> list[EngineHandle]:
    cfg = config if config is not None else EngineConfig()
    return [EngineHandle(Engine(cfg)) for _ in range(count)]  # type: ignore[arg-type]
