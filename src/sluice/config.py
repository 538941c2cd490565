"""One typed configuration: a YAML file, then environment overrides, validated by pydantic v2.

Sections are plain pydantic models. A package that needs its own section defines the model next
to its code and adds one field to :class:`SluiceConfig`; unknown keys are rejected everywhere so a
typo never silently falls back to a default.

Environment overrides, applied after the file:

- ``SLUICE__SECTION__KEY=value`` sets ``section.key`` (any depth; values are parsed as YAML
  scalars or flow collections, so ``true``, ``5``, ``[a, b]`` work);
- shortcuts ``SLUICE_HOST``, ``SLUICE_PORT``, ``SLUICE_POLICY``, ``SLUICE_LOG_LEVEL``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sluice.admission.config import AdmissionConfig
from sluice.governance.config import GovernanceConfig
from sluice.routing.config import RoutingConfig

ENV_PREFIX = "SLUICE__"
# Short names for the settings people change most; each maps to a dotted path.
ENV_SHORTCUTS = {
    "SLUICE_HOST": "server.host",
    "SLUICE_PORT": "server.port",
    "SLUICE_POLICY": "routing.policy",
    "SLUICE_LOG_LEVEL": "logging.level",
}


class ConfigError(Exception):
    """The configuration is invalid; the message names every bad field."""


class Section(BaseModel):
    """Base for every section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    # Adds the routing decision (``Decision.explain()``) as an ``x-sluice-route`` header.
    debug_route_header: bool = False
    # Seconds a client is told to wait (Retry-After) when no endpoint is available.
    retry_after_s: int = Field(1, ge=1)
    # Modules installed into the gateway (admission, governance, admin routes); None means
    # the built-in list (sluice.api.extensions.EXTENSION_MODULES), [] the bare proxy.
    extensions: list[str] | None = None


class UpstreamConfig(Section):
    connect_timeout_s: float = Field(5.0, gt=0)
    # Longest silence between two reads from an engine; None disables it. There is no overall
    # timeout: a long generation that keeps streaming is never cut.
    idle_read_timeout_s: float | None = Field(300.0, gt=0)
    # Extra attempts on other endpoints, only before the first byte reaches the client.
    max_retries: int = Field(2, ge=0, le=10)
    max_connections_per_endpoint: int = Field(1024, ge=1)
    keepalive_timeout_s: float = Field(60.0, gt=0)


class HealthConfig(Section):
    probe_interval_s: float = Field(2.0, gt=0)
    probe_timeout_s: float = Field(1.0, gt=0)
    # Passive outlier detection: this many consecutive failures eject an endpoint.
    failures_to_eject: int = Field(3, ge=1)
    ejection_base_s: float = Field(2.0, gt=0)
    ejection_max_s: float = Field(60.0, gt=0)
    # Re-read each engine's /v1/models every this many probes.
    models_refresh_every: int = Field(5, ge=1)


class ScraperConfig(Section):
    enabled: bool = True
    interval_s: float = Field(0.25, gt=0)
    timeout_s: float = Field(1.0, gt=0)


class LoggingConfig(Section):
    level: str = "info"
    # One JSON line per request on stdout.
    requests: bool = True

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        allowed = {"debug", "info", "warning", "error"}
        if value.lower() not in allowed:
            raise ValueError(f"must be one of {sorted(allowed)}")
        return value.lower()


class ModelConfig(Section):
    """A model the gateway advertises in /v1/models, with metadata of your choosing."""

    name: str = Field(min_length=1)
    owned_by: str = "sluice"
    max_model_len: int | None = Field(None, gt=0)
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class EndpointConfig(Section):
    url: str
    id: str | None = None
    # Models this engine serves; empty means "ask the engine" (its /v1/models).
    models: list[str] = Field(default_factory=list)
    pool: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class SluiceConfig(Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    scraper: ScraperConfig = Field(default_factory=ScraperConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    # LoRA adapter name -> path on the engines, for loading an adapter where routing asks.
    adapters: dict[str, str] = Field(default_factory=dict)
    # Auth, limits, priority queue (sluice.admission) and keys/ledger/registry (sluice.governance).
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SluiceConfig:
    """Read ``path`` (optional), apply environment then explicit ``overrides`` (dotted keys)."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        data = loaded or {}
    for dotted, value in env_overrides(os.environ if env is None else env).items():
        _set_dotted(data, dotted, value)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return SluiceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc)) from None


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Dotted path -> parsed value, for every ``SLUICE__A__B`` variable and shortcut."""
    found: dict[str, Any] = {}
    for name, dotted in ENV_SHORTCUTS.items():
        if name in env:
            found[dotted] = _parse_scalar(env[name])
    for name, raw in env.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            parts = name[len(ENV_PREFIX) :].lower().split("__")
            found[".".join(parts)] = _parse_scalar(raw)
    return found


def format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid configuration ({exc.error_count()} error(s))"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        shown = err.get("input")
        got = "" if isinstance(shown, dict) else f" (got {shown!r})"
        lines.append(f"  {where}: {err['msg']}{got}")
    return "\n".join(lines)


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value
