"""The ledger's writer process: inserts sealed journal segments into the database, off the gateway.

With ``governance.ledger.writer: process`` the gateway only journals rows (a memory copy into a
memory-mapped segment) and seals a segment every ``flush_interval_s``; this process, started by
the gateway (``spawn``), claims every segment no live writer holds, inserts its rows in one
transaction (duplicates ignored) and deletes it: the same replay the in-process writer does after
a crash, run continuously. Nothing is only in memory, so a ``kill -9`` of the gateway loses no row
of an answered request: its last segment is unlocked by the kernel and replayed here. The process
exits, after a last pass, on SIGTERM/SIGINT or when its parent gateway is gone.

    python -m sluice.governance.ledger.process DATABASE_URL SPILL_DIR [--poll S] [--retry S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sluice.governance.db import make_engine, normalise_url
from sluice.governance.ledger.writer import AuditWriter

READY = "ready"


async def serve(
    database_url: str,
    spill_dir: Path,
    poll: float,
    retry: float,
    parent: int | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    stop = stop or asyncio.Event()
    engine = make_engine(database_url)
    writer = AuditWriter(
        engine, spill_dir, replay_interval=retry, sqlite_path=sqlite_file(database_url)
    )
    writer.log_replays = False  # every pass is a replay here; the gateway's metrics show lag
    spill_dir.mkdir(parents=True, exist_ok=True)
    try:
        if on_ready is not None:
            on_ready()
        while not stop.is_set():
            await writer.replay()
            if parent is not None and os.getppid() != parent:
                break  # the gateway died (kill -9): its journal is handed over, finish it
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll if writer.database_up else retry):
                    await stop.wait()
        await writer.replay()  # the last segments the gateway sealed on its way out
    finally:
        writer.close_sqlite()
        await engine.dispose()


def sqlite_file(database_url: str) -> str | None:
    """The database file of a SQLite URL (inserted with the stdlib driver), else None."""
    url = normalise_url(database_url)
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix):
        return None
    path = url.removeprefix(prefix).split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def spawn(database_url: str, spill_dir: Path, poll: float, retry: float) -> subprocess.Popen[str]:
    """Start the writer process for this gateway; returns once it is ready."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sluice.governance.ledger.process",
            database_url,
            str(spill_dir),
            f"--poll={poll}",
            f"--retry={retry}",
            f"--parent={os.getpid()}",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != READY:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"ledger writer process failed to start ({line or 'no output'})")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("database_url")
    ap.add_argument("spill_dir", type=Path)
    ap.add_argument("--poll", type=float, default=0.2, help="seconds between passes")
    ap.add_argument("--retry", type=float, default=2.0, help="seconds between passes while down")
    ap.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = ap.parse_args()

    def ready() -> None:
        print(READY, flush=True)
        # Nobody reads the pipe after this line: logs go where errors go.
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            args.database_url, args.spill_dir, args.poll, args.retry, args.parent, stop, ready
        )

    asyncio.run(run())


if __name__ == "__main__":
    main()
