"""The journal-only gateway side and the ledger writer process: outage, kill -9 of the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from sluice.governance.db import make_engine, migrate
from sluice.governance.ledger import AuditWriter
from sluice.governance.ledger.process import serve
from tests.admission.services import PG_DSN, drop_pg_database, pg_database
from tests.governance.tcp_proxy import TcpProxy
from tests.governance.test_writer import ids, rec


async def _until(engine: AsyncEngine, want: set[str], seconds: float = 15.0) -> set[str]:
    got: set[str] = set()
    for _ in range(int(seconds / 0.1)):
        got = await ids(engine)
        if want <= got:
            break
        await asyncio.sleep(0.1)
    return got


async def test_journal_only_writer_and_process_survive_an_outage(tmp_path: Path) -> None:
    url, name = await pg_database()
    host_port = PG_DSN.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.up()
    direct = make_engine(url)
    proxied_url = url.replace(host_port, f"127.0.0.1:{proxy.port}")
    spill = tmp_path / "spill"
    stop = asyncio.Event()
    try:
        await migrate(direct)
        gateway = AuditWriter(direct, spill, flush_interval=0.05, inline=False)
        await gateway.start()
        writer = asyncio.create_task(serve(proxied_url, spill, 0.05, 0.1, stop=stop))
        for i in range(10):
            gateway.submit(rec(i))
        assert await _until(direct, {f"req-{i}" for i in range(10)}) == {
            f"req-{i}" for i in range(10)
        }
        await proxy.down()
        for i in range(10, 40):
            gateway.submit(rec(i))
        await asyncio.sleep(0.5)
        assert len(await ids(direct)) == 10
        assert list(spill.glob("audit-*.jsonl"))  # waiting on disk
        await proxy.up()  # same port
        assert await _until(direct, {f"req-{i}" for i in range(40)}) == {
            f"req-{i}" for i in range(40)
        }
        await gateway.close()
        stop.set()
        await writer
        assert list(spill.glob("audit-*.jsonl")) == []
    finally:
        stop.set()
        await proxy.down()
        await direct.dispose()
        await drop_pg_database(name)


GATEWAY = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from sluice.governance.db import make_engine
    from sluice.governance.ledger import AuditRecord, AuditWriter
    from sluice.governance.ledger.process import spawn

    async def main():
        engine = make_engine(sys.argv[1])
        proc = spawn(sys.argv[1], Path(sys.argv[2]), 0.5, 0.5)
        print(f"writer {proc.pid}", flush=True)
        # Rows wait in the journal for 5 s: a kill -9 finds most of them only there.
        writer = AuditWriter(engine, sys.argv[2], flush_interval=5.0, inline=False)
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


async def test_kill_9_of_the_gateway_loses_no_row_and_the_writer_process_finishes_it(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", GATEWAY, str(sqlite_engine.url), str(tmp_path / "spill")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = await asyncio.to_thread(proc.stdout.readline)
    writer_pid = int(first.split()[1])
    answered: list[str] = []
    while len(answered) < 1500:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line, "gateway died"
        answered.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    answered += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
    assert len(await ids(sqlite_engine)) < len(answered)  # most rows were only in the journal
    # No restart: the orphaned writer process replays the dead gateway's journal, then exits.
    assert set(answered) <= await _until(sqlite_engine, set(answered))
    for _ in range(100):
        try:
            os.kill(writer_pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.1)
    else:
        os.kill(writer_pid, signal.SIGKILL)
        raise AssertionError("the writer process outlived its gateway")
