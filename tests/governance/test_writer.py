"""The audit writer against SQLite and PostgreSQL: batching, overflow, outage, kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sluice.governance.db import make_engine, migrate
from sluice.governance.ledger import AuditRecord, AuditWriter
from sluice.governance.ledger.schema import audit_log
from tests.admission.services import PG_DSN, drop_pg_database, pg_database
from tests.governance.tcp_proxy import TcpProxy


def rec(i: int, tenant: str = "t") -> AuditRecord:
    return AuditRecord(
        request_id=f"req-{i}",
        ts=1_700_000_000.0 + i,
        status=200,
        tenant=tenant,
        model_requested="m",
        prompt_tokens=10,
        completion_tokens=5,
        sampling={"temperature": 0.5},
        cost_usd=0.001,
    )


async def ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(audit_log.c.request_id))).scalars())


async def test_rows_are_batched_into_the_database(db_engine: AsyncEngine, tmp_path: Path) -> None:
    writer = AuditWriter(db_engine, tmp_path / "spill", batch_size=50, flush_interval=0.05)
    await writer.start()
    for i in range(120):
        writer.submit(rec(i))
    await asyncio.sleep(0.3)
    assert await ids(db_engine) == {f"req-{i}" for i in range(120)}
    async with db_engine.connect() as conn:
        row = (await conn.execute(sa.select(audit_log).limit(1))).first()
    assert row is not None and row._mapping["sampling"] == {"temperature": 0.5}
    await writer.close()
    assert list((tmp_path / "spill").iterdir()) == []  # committed segments are deleted


async def test_queue_overflow_spills_to_the_file_and_loses_nothing(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    writer = AuditWriter(sqlite_engine, tmp_path / "spill", max_queue=10, flush_interval=10)
    await writer.start()
    for i in range(100):
        writer.submit(rec(i))
    await writer.flush()
    assert len(await ids(sqlite_engine)) == 100
    await writer.close()


async def test_database_outage_spills_and_replays_without_restart(tmp_path: Path) -> None:
    url, name = await pg_database()
    host_port = PG_DSN.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.up()
    direct = make_engine(url)
    proxied = make_engine(url.replace(host_port, f"127.0.0.1:{proxy.port}"))
    try:
        await migrate(direct)
        writer = AuditWriter(proxied, tmp_path / "spill", flush_interval=0.05, replay_interval=0.1)
        await writer.start()
        for i in range(10):
            writer.submit(rec(i))
        await asyncio.sleep(0.3)
        assert len(await ids(direct)) == 10
        await proxy.down()
        for i in range(10, 40):
            writer.submit(rec(i))
        await asyncio.sleep(0.5)
        assert len(await ids(direct)) == 10
        assert list((tmp_path / "spill").glob("audit-*.jsonl"))  # spilled to disk
        await proxy.up()  # same port
        for _ in range(50):
            await asyncio.sleep(0.1)
            if len(await ids(direct)) == 40:
                break
        assert await ids(direct) == {f"req-{i}" for i in range(40)}
        await writer.close()
        assert list((tmp_path / "spill").glob("audit-*.jsonl")) == []
    finally:
        await proxy.down()
        await proxied.dispose()
        await direct.dispose()
        await drop_pg_database(name)


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from sluice.governance.db import make_engine
    from sluice.governance.ledger import AuditRecord, AuditWriter

    async def main():
        engine = make_engine(sys.argv[1])
        writer = AuditWriter(engine, sys.argv[2], flush_interval=0.5)
        await writer.start()
        i = 0
        while True:
            writer.submit(AuditRecord(request_id=f"k-{i}", ts=1.0 + i, status=200))
            print(f"k-{i}", flush=True)  # "answered"
            i += 1
            await asyncio.sleep(0.001)

    asyncio.run(main())
    """
)


async def test_kill_9_loses_no_row_that_was_acknowledged(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    db_url = str(sqlite_engine.url)
    spill = tmp_path / "spill"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, str(spill)],
        stdout=subprocess.PIPE,
        text=True,
    )
    answered: list[str] = []
    assert proc.stdout is not None
    while len(answered) < 1500:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line, "child died"
        answered.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    answered += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
    before = await ids(sqlite_engine)
    assert len(before) < len(answered)  # some rows were only in the journal
    writer = AuditWriter(sqlite_engine, spill)
    await writer.start()  # a restarted process replays what the dead one left
    await writer.close()
    assert set(answered) <= await ids(sqlite_engine)
