"""One database for keys and the audit ledger: SQLite (WAL) by default, PostgreSQL via asyncpg.

The schema is managed by Alembic; migrations ship inside this package (``migrations/``) and run
with ``migrate(engine)`` (``sluice up`` and the gateway call it at startup; idempotent).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sluice.governance.migrations import HEAD_REVISION

log = structlog.get_logger("sluice.governance.db")

DEFAULT_URL = "sqlite+aiosqlite:///sluice.db"


def normalise_url(url: str) -> str:
    """Accept plain ``sqlite:///`` and ``postgresql://`` URLs and pick the async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url.removeprefix(plain)
    return url


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(url: str = DEFAULT_URL, **kwargs: Any) -> AsyncEngine:
    url = normalise_url(url)
    kwargs.setdefault("json_serializer", _json_dumps)
    kwargs.setdefault("json_deserializer", orjson.loads)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def alembic_config() -> Any:
    from alembic.config import Config  # imported only when a migration may be due

    cfg = Config()
    cfg.set_main_option("script_location", "sluice.governance:migrations")
    return cfg


def current_revision(conn: Connection) -> str | None:
    """The schema's Alembic revision, or None for a database never migrated."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def _upgrade(conn: Connection, revision: str) -> None:
    if revision == "head" and current_revision(conn) == HEAD_REVISION:
        return  # already current: no Alembic import on the common restart path
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (safe to call from several processes at startup)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


class Database:
    """The engine shared by keys, the ledger and the admin API within one gateway process.

    Created lazily in the gateway's event loop (``start``) and migrated once.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        # Run at shutdown before the engine is disposed (final ledger flush, limiter close).
        self.before_stop: list[Callable[[], Awaitable[None]]] = []

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("database not started")
        return self._engine

    async def start(self) -> None:
        if self._engine is None:
            self._engine = make_engine(self.url)
            await migrate_locked(self._engine, self.url)

    async def stop(self) -> None:
        for step in reversed(self.before_stop):
            try:
                await step()
            except Exception as exc:
                log.error(
                    "shutdown step failed",
                    step=getattr(step, "__qualname__", "?"),
                    error=type(exc).__name__,
                )
        self.before_stop.clear()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


async def migrate_locked(engine: AsyncEngine, url: str) -> None:
    """``migrate`` under a cross-process lock (several replicas may start at once)."""
    if engine.dialect.name == "postgresql":

        def _locked_upgrade(conn: Connection) -> None:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7311520)")
            _upgrade(conn, "head")

        async with engine.begin() as conn:
            await conn.run_sync(_locked_upgrade)
        return
    path = normalise_url(url).split("///", 1)[-1]
    if not path or path.startswith(":memory:"):
        await migrate(engine)
        return
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    lock_path = os.path.join(tempfile.gettempdir(), f"sluice-migrate-{digest}.lock")
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, lock_fd, fcntl.LOCK_EX)
        await migrate(engine)
    finally:
        os.close(lock_fd)


def database_for(gateway: Any, url: str) -> Database:
    """The one ``Database`` of a gateway, started before and stopped after its extensions."""
    db = getattr(gateway, "_sluice_database", None)
    if db is None:
        db = Database(url)
        gateway._sluice_database = db
        gateway.on_startup.insert(0, db.start)
        gateway.on_shutdown.append(db.stop)
    return db
