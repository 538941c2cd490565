"""Active health probes (GET /health) and model discovery (GET /v1/models)."""

from __future__ import annotations

import asyncio

import orjson

from sluice.config import HealthConfig
from sluice.routing import EndpointState
from sluice.upstream.client import EngineClient, UpstreamError
from sluice.upstream.fleet import Fleet


class HealthProber:
    def __init__(self, client: EngineClient, fleet: Fleet, config: HealthConfig) -> None:
        self._client = client
        self._fleet = fleet
        self._config = config
        self._rounds = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._config.probe_interval_s)
            await self.probe_once()

    async def probe_once(self) -> None:
        refresh = self._rounds % self._config.models_refresh_every == 0
        self._rounds += 1
        await asyncio.gather(*(self._probe(s, refresh) for s in self._fleet.states))

    async def _probe(self, state: EndpointState, refresh_models: bool) -> None:
        if not self._fleet.probe_due(state):
            return
        url = state.endpoint.url
        try:
            status, _ = await self._client.get(url + "/health", self._config.probe_timeout_s)
        except UpstreamError:
            status = 0
        ok = status == 200
        # Learn models before readmitting, so a returning endpoint is routable at once.
        if ok and (refresh_models or not state.healthy):
            await self.discover_models(state)
        self._fleet.probe_result(state, ok)

    async def discover_models(self, state: EndpointState) -> None:
        try:
            status, body = await self._client.get(
                state.endpoint.url + "/v1/models", self._config.probe_timeout_s
            )
            if status != 200:
                return
            data = orjson.loads(body).get("data", [])
        except (UpstreamError, orjson.JSONDecodeError, AttributeError):
            return
        models = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if models:
            self._fleet.set_served_models(state, models)
