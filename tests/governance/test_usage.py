"""Usage sums and CSV match the ledger rows (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from sluice.governance.ledger import AuditRecord, AuditWriter
from sluice.governance.prices import Prices, cost
from sluice.governance.usage import UsageError, parse_groups, parse_time, to_csv, usage

PRICES = {"a": Prices(input_per_m=1.0, output_per_m=2.0, cached_per_m=0.5), "b": Prices()}
DAY = 86_400.0
T0 = 1_700_006_400.0  # 2023-11-15T00:00:00Z, a day boundary


async def _fill(engine: AsyncEngine, tmp_path: Path) -> list[AuditRecord]:
    rng = random.Random(7)
    records = []
    for i in range(300):
        model = rng.choice(["a", "b"])
        p, c = rng.randint(1, 5000), rng.randint(0, 800)
        cached = rng.randint(0, p)
        records.append(
            AuditRecord(
                request_id=f"r{i}",
                ts=T0 + rng.uniform(0, 3 * DAY),
                status=200,
                tenant=rng.choice(["acme", "globex"]),
                user=rng.choice(["u1", "u2"]),
                key_id=rng.choice(["k1", "k2", "k3"]),
                model_requested=model,
                model_served=model,
                prompt_tokens=p,
                completion_tokens=c,
                cached_tokens=cached,
                cost_usd=cost(PRICES[model], p, c, cached),
            )
        )
    writer = AuditWriter(engine, tmp_path / "spill")
    await writer.start()
    for r in records:
        writer.submit(r)
    await writer.close()
    return records


async def test_grouped_sums_match_the_ledger(db_engine: AsyncEngine, tmp_path: Path) -> None:
    records = await _fill(db_engine, tmp_path)
    rows = await usage(db_engine, ["tenant", "model"])
    assert len(rows) == 4
    for row in rows:
        mine = [r for r in records if r.tenant == row["tenant"] and r.model_served == row["model"]]
        assert row["requests"] == len(mine)
        assert row["prompt_tokens"] == sum(r.prompt_tokens for r in mine)
        assert row["completion_tokens"] == sum(r.completion_tokens for r in mine)
        assert row["cached_tokens"] == sum(r.cached_tokens for r in mine)
        assert row["cost_usd"] == pytest.approx(sum(r.cost_usd for r in mine))
    total = await usage(db_engine, [])
    assert total[0]["requests"] == 300
    assert total[0]["cost_usd"] == pytest.approx(sum(r.cost_usd for r in records))


async def test_time_range_and_day_groups(db_engine: AsyncEngine, tmp_path: Path) -> None:
    records = await _fill(db_engine, tmp_path)
    rows = await usage(db_engine, ["day"], since=T0 + DAY, until=T0 + 2 * DAY, tenant="acme")
    mine = [r for r in records if T0 + DAY <= r.ts < T0 + 2 * DAY and r.tenant == "acme"]
    assert rows == [
        {
            "day": "2023-11-16T00:00:00+00:00",
            "requests": len(mine),
            "prompt_tokens": sum(r.prompt_tokens for r in mine),
            "completion_tokens": sum(r.completion_tokens for r in mine),
            "cached_tokens": sum(r.cached_tokens for r in mine),
            "cost_usd": pytest.approx(sum(r.cost_usd for r in mine)),
        }
    ]
    text = to_csv(await usage(db_engine, ["key"]), ["key"])
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [r["key"] for r in parsed] == ["k1", "k2", "k3"]
    assert sum(int(r["requests"]) for r in parsed) == 300


def test_bad_groups_and_times_are_reported() -> None:
    with pytest.raises(UsageError):
        parse_groups("tenant,color")
    with pytest.raises(UsageError):
        parse_time("yesterday-ish")
    assert parse_time("2023-11-15") == T0
    assert parse_time("1700000000") == 1_700_000_000.0
