"""Drives one simulated engine in real time inside an asyncio loop.

The engine is pure and runs on a virtual clock; the runner steps it and sleeps each step's
simulated duration, scaled by ``time_scale`` (wall seconds per simulated second; above 1 a small
machine can stand in for a busy GPU). New tokens reach each request's queue when the step that
made them ends on the wall clock. Every time the server reports is simulated time.

Clock mapping: ``virtual = anchor_virtual + (wall - anchor_wall) / time_scale``. An idle engine's
clock is moved up to the mapped time before a request is added, so arrivals are stamped where the
wall clock says. When the machine cannot keep up (a step's Python work takes longer than its
scaled duration), the mapping is re-anchored at the engine's clock rather than letting the engine
race to catch up: the simulated clock then stalls, as a slow GPU would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sluice.sim.engine import Engine
from sluice.sim.kv_events import KVEvent
from sluice.sim.metrics import EngineMetrics
from sluice.sim.request import RequestOutput, SimRequest

log = logging.getLogger("sluice.sim.runner")

# How far (wall seconds) the runner may fall behind schedule before it re-anchors the clock.
_MAX_LAG_S = 0.05
# A step that scheduled nothing but left work behind: wait this long instead of spinning.
_EMPTY_STEP_WAIT_S = 0.001


class OutputChannel:
    """Single-consumer queue of one request's outputs (``None``: aborted or engine gone).

    ``asyncio.Queue`` does twice the work per item (maxsize checks, putter bookkeeping) on a
    path taken once per token per request.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[RequestOutput | None] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: RequestOutput | None) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> RequestOutput | None:
        return self._items.popleft()

    async def get(self) -> RequestOutput | None:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


@dataclass(slots=True)
class RequestHandle:
    """One in-flight request as the HTTP layer sees it."""

    request_id: str
    lora_name: str | None
    queue: OutputChannel = field(default_factory=OutputChannel)
    last_token_time: float | None = None


class EngineRunner:
    def __init__(
        self,
        engine: Engine,
        *,
        time_scale: float = 1.0,
        metrics: EngineMetrics | None = None,
        publish: Callable[[list[KVEvent]], object] | None = None,
        pending_events: list[KVEvent] | None = None,
    ) -> None:
        """``pending_events`` is the list the engine's ``kv_event_sink`` appends to; after each
        step the runner hands its content to ``publish`` as one batch and clears it."""
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.engine = engine
        self.time_scale = time_scale
        self.metrics = metrics
        self._publish = publish
        self._pending_events = pending_events if pending_events is not None else []
        self._handles: dict[str, RequestHandle] = {}
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._anchor_wall = 0.0
        self._anchor_virtual = 0.0
        self.failure: Exception | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._anchor_wall = loop.time()
        self._anchor_virtual = self.engine.now
        self._task = loop.create_task(self._run(), name="sim-engine-runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for handle in self._handles.values():
            handle.queue.put_nowait(None)
        self._handles.clear()

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- clock ------------------------------------------------------------------------------

    def virtual_now(self) -> float:
        wall = asyncio.get_running_loop().time()
        return self._anchor_virtual + (wall - self._anchor_wall) / self.time_scale

    def _wall_for(self, virtual: float) -> float:
        return self._anchor_wall + (virtual - self._anchor_virtual) * self.time_scale

    # -- requests ---------------------------------------------------------------------------

    def submit(self, request: SimRequest) -> RequestHandle:
        """Add a request now; raises the engine's ``RequestError`` for one it refuses."""
        now = self.virtual_now()
        if not self.engine.has_unfinished() and now > self.engine.now:
            self.engine.advance_to(now)
        # While a step is in flight the engine clock is already at that step's end.
        request.arrival_time = min(now, self.engine.now)
        self.engine.add_request(request)
        handle = RequestHandle(request.request_id, request.lora_name)
        self._handles[request.request_id] = handle
        self._work.set()
        return handle

    def abort(self, request_id: str) -> bool:
        """Abort a request (client gone): its blocks are freed at once. False if not in flight."""
        handle = self._handles.pop(request_id, None)
        if handle is None:
            return False
        self.engine.abort(request_id)
        handle.queue.put_nowait(None)
        return True

    def in_flight(self) -> int:
        return len(self._handles)

    def lora_adapters(self) -> tuple[list[str], list[str]]:
        """Adapters of running and of waiting requests (``vllm:lora_requests_info``)."""
        running_ids = set()
        running: set[str] = set()
        for seq in self.engine.scheduler.running:
            running_ids.add(seq.request_id)
            if seq.lora_name:
                running.add(seq.lora_name)
        waiting = {
            h.lora_name
            for h in self._handles.values()
            if h.lora_name and h.request_id not in running_ids
        }
        return sorted(running), sorted(waiting)

    def publish_pending_events(self) -> None:
        """Send KV events produced outside a step (a prefix-cache reset) right away."""
        if self._pending_events:
            batch = list(self._pending_events)
            self._pending_events.clear()
            if self._publish is not None:
                self._publish(batch)

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.engine.has_unfinished():
                    self._work.clear()
                    await self._work.wait()
                    continue
                step = self.engine.step()
                self.publish_pending_events()
                delay = self._wall_for(self.engine.now) - loop.time()
                stalled = delay < -_MAX_LAG_S
                if self.metrics is not None:
                    self.metrics.observe_step_delay(delay, stalled)
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    if stalled:
                        self._anchor_wall, self._anchor_virtual = loop.time(), self.engine.now
                    await asyncio.sleep(0 if step.outputs else _EMPTY_STEP_WAIT_S)
                self._deliver(step.outputs)
        except Exception as exc:  # the server reports itself unhealthy (503) from here on
            log.exception("the simulated engine failed; the server now answers 503")
            self.failure = exc
            for handle in self._handles.values():
                handle.queue.put_nowait(None)
            self._handles.clear()

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        now = self.engine.now
        metrics = self.metrics
        for out in outputs:
            handle = self._handles.get(out.request_id)
            if handle is None:
                continue  # aborted while its step was in flight
            if out.new_token_ids and metrics is not None:
                if handle.last_token_time is None:
                    first = out.timing.first_token if out.timing.first_token is not None else now
                    metrics.observe_first_token(max(0.0, first - out.timing.arrival))
                else:
                    metrics.observe_inter_token(max(0.0, now - handle.last_token_time))
            if out.new_token_ids:
                handle.last_token_time = now
            handle.queue.put_nowait(out)
            if out.finished:
                del self._handles[out.request_id]
                if metrics is not None and out.finish_reason != "abort":
                    timing = out.timing
                    metrics.observe_finished(
                        arrival=timing.arrival,
                        first_scheduled=timing.first_scheduled,
                        first_token=timing.first_token,
                        finished=timing.finished if timing.finished is not None else now,
                        prompt_tokens=out.num_prompt_tokens,
                        generation_tokens=out.num_output_tokens,
                    )
