"""The Gateway: the long-lived parts (fleet, policy, engine client, metrics, hooks) and their
background loops (health probes, metrics scraper). The ASGI app is built around one instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from starlette.routing import BaseRoute

from sluice.api.extensions import EXTENSION_MODULES, install_extensions
from sluice.api.facts import (
    ContextFacts,
    EngineTokenizer,
    context_facts,
    facts_builder_from_config,
)
from sluice.api.hooks import Hooks
from sluice.config import ModelConfig, SluiceConfig
from sluice.routing import EndpointState, Policy, RequestFacts
from sluice.routing.config import build_index, build_policy, build_router
from sluice.routing.facts_builder import FactsBuilder
from sluice.routing.kv_mirror import KvEventMirror
from sluice.routing.prefix_index import PrefixIndex
from sluice.routing.router import Router
from sluice.telemetry.logs import RequestLog, get_logger
from sluice.telemetry.metrics import GatewayMetrics
from sluice.upstream.client import EngineClient
from sluice.upstream.fleet import Fleet, endpoints_from_config
from sluice.upstream.health import HealthProber
from sluice.upstream.kv_events import (
    KvEventSubscriber,
    PrefixIndexCollector,
    sources_from_endpoints,
)
from sluice.upstream.scraper import MetricsScraper


class Gateway:
    def __init__(
        self,
        config: SluiceConfig,
        *,
        hooks: Hooks | None = None,
        policy: Policy | None = None,
        facts_builder: ContextFacts | None = None,
        extensions: bool = True,
    ) -> None:
        self.config = config
        self.clock = time.monotonic
        self.metrics = GatewayMetrics(lambda: self.fleet.states)
        self.fleet = Fleet(
            endpoints_from_config(config.endpoints),
            config.health,
            clock=self.clock,
            on_eject=self._ejected,
        )
        routing = config.routing
        builder = facts_builder_from_config(routing)
        # The routing package's builder behind ``facts_builder`` (None when one is injected).
        self.facts_core: FactsBuilder | None = None if facts_builder else builder
        if policy is None:
            index = None
            if routing.prefix_index.mode != "off":
                index = build_index(routing, exact_tokens=builder.exact)
            policy = build_policy(routing, index)
        self.policy = policy
        # Versions, LoRA candidates, pools and session affinity, in front of the policy.
        self.router: Router = build_router(routing, policy)
        self.facts_builder = facts_builder or context_facts(builder)
        self.client = EngineClient(config.upstream)
        # routing.facts.remote_tokenize: exact prompt tokens from an engine's /tokenize.
        self.engine_tokenizer: EngineTokenizer | None = None
        if builder.remote_tokens and facts_builder is None:
            self.engine_tokenizer = EngineTokenizer(
                self.client, lambda: self.fleet.states, builder, self.clock
            )
        self.hooks = hooks or Hooks()
        self.models: dict[str, ModelConfig] = {m.name: m for m in config.models}
        self.prober = HealthProber(self.client, self.fleet, config.health)
        self.scraper = MetricsScraper(
            self.client,
            self.fleet.states,
            config.scraper.interval_s,
            config.scraper.timeout_s,
            on_update=self.policy.on_scrape,
        )
        # The per-request line is on the hot path: a lean writer, flushed again on shutdown.
        self.request_log = RequestLog()
        self.log = get_logger("sluice.gateway")
        self._tasks: list[asyncio.Task[None]] = []
        self._known: dict[str, bool] = {}
        self._known_generation = -1
        # Filled by extensions (``api/extensions.py``): extra routes and lifecycle coroutines.
        self.routes: list[BaseRoute] = []
        self.on_startup: list[Callable[[], Awaitable[None]]] = []
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        if extensions:
            modules = config.server.extensions
            install_extensions(self, EXTENSION_MODULES if modules is None else tuple(modules))
        # Prefix index metrics, and in precise mode the engines' KV events feeding the index.
        self.kv_subscriber: KvEventSubscriber | None = None
        index = getattr(policy, "index", None)
        if isinstance(index, PrefixIndex):
            mirror = None
            if routing.prefix_index.mode == "precise":
                mirror = KvEventMirror(index)
                sources = sources_from_endpoints(s.endpoint for s in self.fleet.states)
                self.kv_subscriber = KvEventSubscriber(mirror, sources)
            self.metrics.registry.register(PrefixIndexCollector(index, mirror, self.kv_subscriber))

    async def start(self) -> None:
        await self.client.start()
        for startup in self.on_startup:
            await startup()
        # One probe round first, so /v1/models and routing know the engines' models at once.
        await self.prober.probe_once()
        self._tasks.append(asyncio.create_task(self.prober.run(), name="sluice-health"))
        if self.config.scraper.enabled:
            self._tasks.append(asyncio.create_task(self.scraper.run(), name="sluice-scraper"))
        if self.kv_subscriber is not None:
            self.kv_subscriber.start()
        self.log.info(
            "gateway_started",
            endpoints=[s.endpoint.url for s in self.fleet.states],
            policy=self.config.routing.policy,
        )

    async def stop(self) -> None:
        if self.kv_subscriber is not None:
            await self.kv_subscriber.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for shutdown in self.on_shutdown:
            try:
                await shutdown()
            except Exception:
                self.log.exception("shutdown_hook_failed")
        await self.client.close()
        self.request_log.flush()

    def learn_prompt_rate(self, facts: RequestFacts, prompt_tokens: int) -> None:
        """No tokenizer: refine the bytes-per-token estimate from the engine's own count, and
        move the prefix index to the new block unit when it changes."""
        if self.facts_core is None or not self.facts_core.observe(facts, prompt_tokens):
            return
        index = getattr(self.policy, "index", None)
        if isinstance(index, PrefixIndex):
            index.tokens_per_block = self.facts_core.tokens_per_block

    def known_model(self, model: str) -> bool:
        """Configured, versioned, served by an engine, or possibly served (an engine whose
        list is not known yet)."""
        if self._known_generation != self.fleet.generation:
            self._known.clear()
            self._known_generation = self.fleet.generation
        known = self._known.get(model)
        if known is None:
            known = (
                model in self.models
                or model in self.router.versions.models
                or any(
                    not s.endpoint.models or model in s.endpoint.models for s in self.fleet.states
                )
            )
            if len(self._known) < 10_000:  # bounded: clients choose the names
                self._known[model] = known
        return known

    def _ejected(self, state: EndpointState) -> None:
        self.metrics.ejections.labels(state.id).inc()
        self.log.warning(
            "endpoint_ejected",
            endpoint=state.id,
            url=state.endpoint.url,
            failures=state.consecutive_failures,
            seconds=round(state.ejected_until - self.clock(), 3),
        )
