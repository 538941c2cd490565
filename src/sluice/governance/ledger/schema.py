"""The audit table as SQLAlchemy Core (the migration in ``migrations/versions`` creates it)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("tenant", sa.String(200)),
    sa.Column("user", sa.String(200)),
    sa.Column("key_id", sa.String(32)),
    sa.Column("model_requested", sa.String(200)),
    sa.Column("model_served", sa.String(200)),
    sa.Column("model_version", sa.String(100)),
    sa.Column("weights_digest", sa.String(100)),
    sa.Column("adapter", sa.String(200)),
    sa.Column("endpoint", sa.String(200)),
    sa.Column("routing_reason", sa.Text),
    sa.Column("prompt_hash", sa.String(64)),
    sa.Column("sampling", sa.JSON),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cached_tokens", sa.Integer, nullable=False),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("e2e_ms", sa.Float),
    sa.Column("queue_ms", sa.Float),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("finish_reason", sa.String(32)),
    sa.Column("guardrails", sa.JSON),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("prompt_text", sa.Text),
    sa.Column("response_text", sa.Text),
)

COLUMNS = tuple(c.name for c in audit_log.columns)
