"""The endpoint set: states, which endpoints serve which model, passive outlier detection.

Ejection: ``failures_to_eject`` consecutive failures (connect errors, timeouts, 5xx, failed
probes) take an endpoint out (``healthy = False`` with ``ejected_until``) for a backoff that
doubles with each ejection up to ``ejection_max_s``. After the backoff only a successful active
probe lets it back in; a failed probe ejects it again for longer.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence

from sluice.config import EndpointConfig, HealthConfig
from sluice.routing import Endpoint, EndpointState

Clock = Callable[[], float]


def endpoints_from_config(items: Iterable[EndpointConfig]) -> list[Endpoint]:
    endpoints = []
    for index, item in enumerate(items):
        endpoints.append(
            Endpoint(
                id=item.id or f"e{index}",
                url=item.url,
                models=frozenset(item.models),
                pool=item.pool,
                labels=dict(item.labels),
            )
        )
    ids = [e.id for e in endpoints]
    if len(set(ids)) != len(ids):
        raise ValueError(f"endpoint ids must be unique, got {ids}")
    return endpoints


class Fleet:
    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        health: HealthConfig,
        *,
        clock: Clock = time.monotonic,
        on_eject: Callable[[EndpointState], None] | None = None,
    ) -> None:
        self.states = [EndpointState(e) for e in endpoints]
        self.by_id = {s.id: s for s in self.states}
        self._config = {e.id: e.models for e in endpoints}
        self._health = health
        self._clock = clock
        self._on_eject = on_eject
        self._ejections: dict[str, int] = {s.id: 0 for s in self.states}
        # Bumped whenever the set of served models changes (caches key on it).
        self.generation = 0

    # -- models ------------------------------------------------------------------------------

    def served_models(self) -> set[str]:
        return {m for s in self.states for m in s.endpoint.models}

    def set_served_models(self, state: EndpointState, models: Iterable[str]) -> None:
        """Record what an engine says it serves, unless the config pinned the list."""
        if self._config.get(state.id):
            return
        learned = frozenset(models)
        if learned != state.endpoint.models:
            state.endpoint = dataclasses.replace(state.endpoint, models=learned)
            self.generation += 1

    # -- health ------------------------------------------------------------------------------

    def record_success(self, state: EndpointState) -> None:
        if state.consecutive_failures:
            state.consecutive_failures = 0
        if self._ejections[state.id] and state.healthy:
            self._ejections[state.id] = 0

    def record_failure(self, state: EndpointState) -> bool:
        """Count one failure; returns True if it ejected the endpoint."""
        state.consecutive_failures += 1
        if state.consecutive_failures < self._health.failures_to_eject:
            return False
        if not state.healthy:
            return False  # already out
        self._eject(state)
        return True

    def probe_due(self, state: EndpointState) -> bool:
        """An ejected endpoint is probed only once its backoff has passed."""
        return state.healthy or self._clock() >= state.ejected_until

    def probe_result(self, state: EndpointState, ok: bool) -> None:
        if ok:
            if not state.healthy:
                state.healthy = True
                state.ejected_until = 0.0
                state.consecutive_failures = 0
            return
        if state.healthy:
            self.record_failure(state)
        else:
            self._eject(state)  # still down after its backoff: out again, for longer

    def retry_after(self) -> int:
        """Seconds until the soonest ejected endpoint may be probed back in (at least 1)."""
        now = self._clock()
        waits = [s.ejected_until - now for s in self.states if not s.healthy]
        return max(1, int(min(waits, default=1.0) + 0.999))

    def any_available(self) -> bool:
        now = self._clock()
        return any(s.available(now) for s in self.states)

    def _eject(self, state: EndpointState) -> None:
        count = self._ejections[state.id]
        backoff = min(self._health.ejection_base_s * (2**count), self._health.ejection_max_s)
        self._ejections[state.id] = count + 1
        state.healthy = False
        state.ejected_until = self._clock() + backoff
        if self._on_eject is not None:
            self._on_eject(state)
