"""Usage and cost from the audit ledger, grouped by tenant, user, key, model and time; CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sluice.governance.ledger.schema import audit_log

GROUPS = ("tenant", "user", "key", "model", "day", "hour")
_SECONDS = {"day": 86_400, "hour": 3_600}
METRICS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd")


class UsageError(ValueError):
    pass


def _bucket(engine: AsyncEngine, seconds: int) -> sa.ColumnElement[Any]:
    ts = audit_log.c.ts
    if engine.dialect.name == "postgresql":
        return sa.cast(sa.func.floor(ts / seconds), sa.BigInteger) * seconds
    return sa.cast(ts / seconds, sa.Integer) * seconds  # SQLite truncates; ts > 0


def _column(engine: AsyncEngine, group: str) -> sa.ColumnElement[Any]:
    c = audit_log.c
    if group == "tenant":
        return c.tenant
    if group == "user":
        return c.user
    if group == "key":
        return c.key_id
    if group == "model":
        return sa.func.coalesce(c.model_served, c.model_requested)
    return _bucket(engine, _SECONDS[group])


def parse_groups(spec: str | Sequence[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    groups = [g.strip() for g in items if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise UsageError(f"unknown group {unknown[0]!r}; use any of {', '.join(GROUPS)}")
    return groups


async def usage(
    engine: AsyncEngine,
    group_by: Sequence[str] = ("tenant", "model"),
    since: float | None = None,
    until: float | None = None,
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Sums per group over ``[since, until)`` (epoch seconds). Rows sorted by group values."""
    groups = parse_groups(group_by)
    cols = [_column(engine, g).label(g) for g in groups]
    c = audit_log.c
    query = sa.select(
        *cols,
        sa.func.count().label("requests"),
        sa.func.coalesce(sa.func.sum(c.prompt_tokens), 0).label("prompt_tokens"),
        sa.func.coalesce(sa.func.sum(c.completion_tokens), 0).label("completion_tokens"),
        sa.func.coalesce(sa.func.sum(c.cached_tokens), 0).label("cached_tokens"),
        sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0).label("cost_usd"),
    )
    if since is not None:
        query = query.where(c.ts >= since)
    if until is not None:
        query = query.where(c.ts < until)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    if cols:
        query = query.group_by(*cols).order_by(*cols)
    async with engine.connect() as conn:
        result = await conn.execute(query)
        rows = [dict(r._mapping) for r in result]
    for row in rows:
        for g in groups:
            if g in _SECONDS and row[g] is not None:
                row[g] = datetime.fromtimestamp(int(row[g]), UTC).isoformat()
        for m in METRICS[:-1]:
            row[m] = int(row[m])
        row["cost_usd"] = float(row["cost_usd"])
    return rows


def to_csv(rows: Sequence[dict[str, Any]], groups: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*groups, *METRICS])
    for row in rows:
        values = [row.get(g) for g in groups]
        writer.writerow([*values, *(row[m] for m in METRICS[:-1]), f"{row['cost_usd']:.6f}"])
    return out.getvalue()


def parse_time(value: str | None) -> float | None:
    """Epoch seconds, an ISO date/time (UTC if no zone), or a relative ``24h``/``7d``/``30m``."""
    if value is None or value == "":
        return None
    value = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC).timestamp() - float(value[:-1]) * units[value[-1]]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"cannot read time {value!r}: use epoch seconds, ISO 8601 or 24h"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
