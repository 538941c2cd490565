"""Shared fixtures for real services: Redis, SQLite and PostgreSQL databases.

Missing services fail the tests (as in CI); ``SLUICE_TEST_SKIP_SERVICES=1`` skips them locally.
Imported by the conftest files of ``tests/admission`` and ``tests/governance``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from sluice.governance.db import make_engine, migrate

REDIS_URL = os.environ.get("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("SLUICE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _unavailable(what: str, exc: BaseException) -> None:
    if os.environ.get("SLUICE_TEST_SKIP_SERVICES") == "1":
        pytest.skip(f"{what} unavailable: {exc}")
    raise RuntimeError(f"{what} unavailable (set SLUICE_TEST_SKIP_SERVICES=1 to skip)") from exc


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        _unavailable("Redis", exc)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_prefix(redis_client: Redis) -> AsyncIterator[str]:
    prefix = f"test:{uuid.uuid4().hex[:12]}"
    yield prefix
    keys = [k async for k in redis_client.scan_iter(match="{" + prefix + "}:*")]
    if keys:
        await redis_client.delete(*keys)


async def pg_database() -> tuple[str, str]:
    """Create a uniquely named database; returns (its SQLAlchemy URL, its name)."""
    name = f"sluice_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(PG_DSN)
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_DSN.rsplit("/", 1)[0]
    return f"{base}/{name}", name


async def drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty database: SQLite (WAL) file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'sluice.db'}")
        await migrate(engine)
        yield engine
        await engine.dispose()
        return
    url, name = await pg_database()
    engine = make_engine(url)
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()
        await drop_pg_database(name)


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'sluice.db'}")
    await migrate(engine)
    yield engine
    await engine.dispose()
