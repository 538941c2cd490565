"""The ``governance`` configuration section: database, audit ledger, model registry, text."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sluice.governance.registry import ModelEntry


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LedgerConfig(_Section):
    enabled: bool = True
    # Journal and spill files (must be local disk; replayed at start and after outages).
    spill_dir: str = ".sluice/audit-spill"
    batch_size: int = Field(500, ge=1)
    flush_interval_s: float = Field(0.2, gt=0)
    max_queue: int = Field(10_000, ge=1)
    replay_interval_s: float = Field(2.0, gt=0)
    # Who inserts the rows: ``process``, a writer process the gateway starts (the gateway only
    # journals; no database work on its CPU), or ``inline``, a task in the gateway's own loop.
    writer: Literal["process", "inline"] = "process"


class GovernanceConfig(_Section):
    # Keys and the audit ledger: SQLite (WAL) by default, or postgresql://... (asyncpg).
    database_url: str = "sqlite:///sluice.db"
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    # Served models: version, revision, weights digest, context length, pools, prices.
    registry: list[ModelEntry] = Field(default_factory=list)
    # Tenants whose prompt and response text is stored in the ledger (redacted).
    store_text_tenants: list[str] = Field(default_factory=list)
