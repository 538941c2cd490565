"""API keys and the audit ledger.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.Integer, nullable=True),
        sa.Column("concurrency", sa.Integer, nullable=True),
        sa.Column("trusted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("salt", sa.LargeBinary(32), nullable=False),
        sa.Column("digest", sa.LargeBinary(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    op.create_table(
        "audit_log",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("tenant", sa.String(200), nullable=True),
        sa.Column("user", sa.String(200), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("model_requested", sa.String(200), nullable=True),
        sa.Column("model_served", sa.String(200), nullable=True),
        sa.Column("model_version", sa.String(100), nullable=True),
        sa.Column("weights_digest", sa.String(100), nullable=True),
        sa.Column("adapter", sa.String(200), nullable=True),
        sa.Column("endpoint", sa.String(200), nullable=True),
        sa.Column("routing_reason", sa.Text, nullable=True),
        sa.Column("prompt_hash", sa.String(64), nullable=True),
        sa.Column("sampling", sa.JSON, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cached_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("e2e_ms", sa.Float, nullable=True),
        sa.Column("queue_ms", sa.Float, nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("guardrails", sa.JSON, nullable=True),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("prompt_text", sa.Text, nullable=True),
        sa.Column("response_text", sa.Text, nullable=True),
    )
    op.create_index("ix_audit_log_ts", "audit_log", ["ts"])
    op.create_index("ix_audit_log_tenant_ts", "audit_log", ["tenant", "ts"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_tenant_ts", "audit_log")
    op.drop_index("ix_audit_log_ts", "audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_api_keys_tenant", "api_keys")
    op.drop_table("api_keys")
