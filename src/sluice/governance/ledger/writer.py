"""The audit writer: off the request path, batched, bounded, and loses nothing.

``submit`` (synchronous, a few microseconds) appends the row to the current journal segment and
to a bounded in-memory batch. A background task rotates the segment every ``flush_interval`` (or
when ``batch_size`` rows are waiting), inserts its rows in one transaction and deletes it. When the
in-memory queue overflows, the segment is inserted from its file instead; when the database is
down, the segment stays on disk (a spill) and is replayed, with every other unclaimed segment in
the spill directory, once the database answers again. Inserts ignore duplicate request ids, so a
replay after a crash between commit and delete is harmless.

The gateway journals compact rows (``submit_raw``, see ``raw.py``): what it knows at settle, with
the registry in each segment's header; whoever inserts expands them into audit rows (the version,
digest, cost and routing explanation are computed there, not on the request path).

With ``inline=False`` (``governance.ledger.writer: process``) this process only journals: ``submit``
is an encode and a memory copy, and every ``flush_interval`` the current segment is sealed (its
lock released) for a separate writer process (``ledger/process.py``) that inserts unlocked
segments and deletes them, so no database work shares the gateway's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from sluice.governance.ledger import journal, raw
from sluice.governance.ledger.metrics import (
    DB_UP,
    LAG,
    PENDING_SEGMENTS,
    QUEUE_DEPTH,
    REPLAYED,
    SPILLED,
    WRITTEN,
)
from sluice.governance.ledger.record import AuditRecord
from sluice.governance.ledger.schema import COLUMNS

log = structlog.get_logger("sluice.governance.ledger")


_MIN_PREFAULT = 64 << 10


class AuditWriter:
    log_replays = True
    prefault = True  # journal-only mode: open segments ahead, pages faulted in

    def __init__(
        self,
        engine: AsyncEngine,
        spill_dir: str | Path,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_queue: int = 10_000,
        replay_interval: float = 2.0,
        inline: bool = True,
        header: bytes = b"",
        sqlite_path: str | None = None,
    ) -> None:
        self._engine = engine
        # The first line of every segment (the registry compact rows are expanded with).
        self._header = header
        self._models = raw.models_from_header(orjson.loads(header)) if header else {}
        self._inline = inline
        self._dir = Path(spill_dir)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_queue = max_queue
        self._replay_interval = replay_interval
        self._segment: journal.Segment | None = None
        self._sealed: list[journal.Segment] = []  # full or rotated, waiting for the writer
        self._queued = 0  # rows held in memory across segments being written
        self._n = 0
        self._spilled_segments = 0
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._db_ok = True
        self._next_replay = 0.0
        self._closing = False
        self._insert_sql: str | None = None
        self._expect = _MIN_PREFAULT  # journal bytes of the last sealed segment
        # Insert with the stdlib sqlite3 driver into this file instead of through the engine.
        self._sqlite_path = sqlite_path
        self._sqlite: sqlite3.Connection | None = None

    # -- request path -------------------------------------------------------------------------

    def submit(self, record: AuditRecord | dict[str, Any]) -> None:
        row = record.row() if isinstance(record, AuditRecord) else record
        line = journal.encode(row)
        if not self._inline:
            self._journal(line)
            return
        self._append(row, line)

    def _append(self, row: dict[str, Any] | list[Any], line: bytes) -> None:
        seg = self._segment
        if seg is None or not seg.fits(len(line)):
            if seg is not None:  # full: seal it for the writer, start another
                self._sealed.append(seg)
                self._kick.set()
            seg = self._segment = self._open_segment(len(line))
        keep = self._queued < self._max_queue
        if not keep and seg.complete:
            SPILLED.labels("overflow").inc(seg.count + 1)
            self._queued -= len(seg.rows)
        elif not seg.complete:
            SPILLED.labels("overflow").inc()
        seg.append(row, line, keep)
        if seg.complete:
            self._queued += 1
        QUEUE_DEPTH.set(self._queued)
        if seg.count >= self._batch_size:
            self._kick.set()

    def submit_raw(self, row: list[Any]) -> None:
        """A compact row (``raw.py``): in process mode an encode and a memory copy; expanded into
        the audit row by whoever inserts it."""
        line = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
        if not self._inline:
            self._journal(line)
            return
        self._append(row, line)

    def _journal(self, line: bytes) -> None:
        seg = self._segment
        if seg is None or not seg.fits(len(line)):
            if seg is not None:
                seg.close(delete=False)  # full: sealed, the writer process takes it
            seg = self._segment = self._open_segment(len(line))
        seg.write(line)

    @property
    def database_up(self) -> bool:
        return self._db_ok

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        if not self._inline:
            self._task = asyncio.get_running_loop().create_task(self._rotate())
            return
        await self.replay()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _rotate(self) -> None:
        """Journal-only mode: seal the current segment every ``flush_interval`` and open the
        next one ahead, its first pages faulted in (``Segment.prefault``)."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    await self._kick.wait()
            self.seal()
            if not self._closing:
                try:
                    self._prepare()
                except OSError as exc:  # e.g. a full disk: the request path opens it instead
                    log.warning("journal segment not prepared ahead", error=str(exc)[:200])

    def _prepare(self) -> None:
        """Open the next segment now and fault in what one flush interval is expected to fill
        (what the last one took, plus half), so the request path only copies bytes."""
        if not self.prefault:
            return
        seg = self._segment
        if seg is None:
            seg = self._segment = self._open_segment()
        seg.prefault(seg.offset + self._expect + self._expect // 2)

    def seal(self, final: bool = False) -> None:
        """Journal-only mode: hand the current segment (if it has rows) to the writer process,
        and show how much is waiting for it. ``final``: an empty one is removed."""
        seg = self._segment
        if seg is not None and (seg.count or final):
            self._segment = None
            if seg.count:
                self._expect = max(_MIN_PREFAULT, seg.offset)
            seg.close(delete=not seg.count)
        pending = journal.pending(self._dir)
        PENDING_SEGMENTS.set(len(pending))
        LAG.set(max(0.0, time.time() - pending[0]) if pending else 0.0)

    async def close(self) -> None:
        """Write what is queued (or leave it on disk for the next start)."""
        self._closing = True
        self._kick.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inline:
            await self.flush()
        else:
            self.seal(final=True)

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await self.flush()
                if time.monotonic() >= self._next_replay and (
                    self._spilled_segments or not self._db_ok
                ):
                    await self.replay()
            except Exception as exc:  # keep the writer alive whatever happens
                log.error("audit writer step failed", error=type(exc).__name__)

    # -- writing --------------------------------------------------------------------------------

    def _open_segment(self, need: int = 0) -> journal.Segment:
        self._n += 1
        name = f"audit-{os.getpid()}-{time.time_ns()}-{self._n}.jsonl"
        size = max(journal.SEGMENT_BYTES, need + len(self._header))
        return journal.Segment(self._dir / name, size, self._header)

    async def flush(self) -> None:
        """Seal the current segment and commit every sealed one (or keep it on disk, a spill)."""
        async with self._lock:
            seg = self._segment
            if seg is not None and seg.count:
                self._segment = None
                self._sealed.append(seg)
            sealed, self._sealed = self._sealed, []
            if not sealed:
                LAG.set(0.0)
                return
            LAG.set(time.time() - (sealed[0].first_ts or time.time()))
            for seg in sealed:
                await self._commit(seg)

    async def _commit(self, seg: journal.Segment) -> None:
        if seg.complete:
            models = self._models
            rows = [
                raw.row_params(r) if isinstance(r, dict) else raw.values(r, models, True)
                for r in seg.rows
            ]
            self._queued -= len(rows)
            QUEUE_DEPTH.set(self._queued)
        else:
            rows = journal.read_params(seg.path)
        if not self._db_ok and time.monotonic() < self._next_replay:
            self._spill(seg, "database")
            return
        try:
            await self._insert(rows)
        except Exception as exc:
            self._db_failed(exc)
            self._spill(seg, "database")
            return
        self._db_recovered()
        WRITTEN.inc(len(rows))
        seg.close(delete=True)
        LAG.set(0.0)

    def _spill(self, seg: journal.Segment, reason: str) -> None:
        if seg.complete:  # overflowed rows were counted at submit
            SPILLED.labels(reason).inc(seg.count)
        seg.close(delete=False)
        self._spilled_segments += 1
        PENDING_SEGMENTS.set(self._spilled_segments)

    async def replay(self) -> int:
        """Insert every unclaimed segment in the spill directory; returns rows replayed."""
        self._next_replay = time.monotonic() + self._replay_interval
        total = 0
        remaining = 0
        for path, fd in list(journal.claim_unlocked(self._dir)):
            try:
                rows = journal.read_params(path)
                try:
                    await self._insert(rows)
                except Exception as exc:
                    self._db_failed(exc)
                    remaining += 1
                    continue
                self._db_recovered()
                path.unlink(missing_ok=True)
                REPLAYED.inc(len(rows))
                WRITTEN.inc(len(rows))
                total += len(rows)
            finally:
                os.close(fd)
        self._spilled_segments = remaining
        PENDING_SEGMENTS.set(remaining)
        if total and self.log_replays:
            log.info("audit rows replayed from spill files", rows=total)
        return total

    async def _insert(self, params: list[tuple[Any, ...]]) -> None:
        """One transaction; plain DBAPI ``executemany`` (SQLAlchemy's per-row parameter
        processing costs more than the insert itself) of rows already in column order
        (``raw.values``/``raw.row_params``); duplicate request ids are skipped."""
        if not params:
            return
        if self._sqlite_path is not None:
            self._insert_sqlite(params)
            return
        sql = self._sql()
        async with self._engine.begin() as conn:
            for i in range(0, len(params), self._batch_size):
                await conn.exec_driver_sql(sql, params[i : i + self._batch_size])

    def _insert_sqlite(self, params: list[tuple[Any, ...]]) -> None:
        """The writer process on SQLite: the stdlib driver, synchronously (this process does
        nothing else; no thread hop and no SQLAlchemy per batch)."""
        con = self._sqlite
        if con is None:
            con = sqlite3.connect(self._sqlite_path or "", timeout=5.0, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._sqlite = con
        sql = self._sql()
        try:
            with con:  # one transaction: commit, or roll back on error
                for i in range(0, len(params), self._batch_size):
                    con.executemany(sql, params[i : i + self._batch_size])
        except Exception:
            self._sqlite = None
            con.close()
            raise

    def close_sqlite(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None

    def _sql(self) -> str:
        if self._insert_sql is None:
            style = "qmark" if self._sqlite_path else self._engine.dialect.paramstyle
            marks = [f"${i + 1}" if style == "numeric_dollar" else "?" for i in range(len(COLUMNS))]
            if style not in ("numeric_dollar", "qmark"):
                raise RuntimeError(f"unsupported DBAPI paramstyle {style!r}")
            cols = ", ".join(f'"{c}"' for c in COLUMNS)
            self._insert_sql = (
                f"INSERT INTO audit_log ({cols}) VALUES ({', '.join(marks)}) "
                "ON CONFLICT (request_id) DO NOTHING"
            )
        return self._insert_sql

    def _db_failed(self, exc: BaseException) -> None:
        self._next_replay = time.monotonic() + self._replay_interval
        if self._db_ok:
            self._db_ok = False
            DB_UP.set(0)
            log.warning(
                "audit database unavailable; rows spill to disk",
                error=type(exc).__name__,
                spill_dir=str(self._dir),
            )

    def _db_recovered(self) -> None:
        if not self._db_ok:
            self._db_ok = True
            DB_UP.set(1)
            log.warning("audit database reachable again; replaying spills")
