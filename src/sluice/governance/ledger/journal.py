"""Journal segments: every audit row is appended to a local file before it is queued.

A write to the page cache (here through a shared memory map) survives ``kill -9`` of the
process, so a row for an answered request is never lost: the writer deletes a segment only after
all its rows are committed, and whatever is left (a crash, a database outage, a queue overflow)
is replayed from the files. Each open segment is ``flock``-ed by its writer; any process may
replay segments nobody holds.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from sluice.governance.ledger.metrics import CORRUPT

SEGMENT_BYTES = 8 << 20  # a rotation every flush interval keeps segments far below this


class Segment:
    """One journal file, memory-mapped (``MAP_SHARED``): appending a row is a memory copy, not a
    system call, and the pages belong to the page cache, so they survive the process."""

    def __init__(self, path: Path, size: int = SEGMENT_BYTES) -> None:
        self.path = path
        # Created under a name replay does not match, locked, then renamed: a replaying process
        # never sees a new segment before its writer holds the lock (it would take it for an
        # empty segment left by a dead process and delete it).
        hidden = path.with_name("." + path.name)
        self.fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(hidden, path)
        os.ftruncate(self.fd, size)  # sparse: pages are allocated as rows arrive
        self._map = mmap.mmap(self.fd, size)
        self.size = size
        self.offset = 0
        self.rows: list[dict[str, Any]] = []  # in-memory copy, while it is complete
        self.complete = True  # False once a row overflowed the in-memory queue
        self.count = 0
        self.first_ts: float | None = None

    def fits(self, n: int) -> bool:
        return self.offset + n <= self.size

    def append(self, row: dict[str, Any], line: bytes, keep: bool) -> None:
        end = self.offset + len(line)
        self._map[self.offset : end] = line
        self.offset = end
        self.count += 1
        if self.first_ts is None:
            self.first_ts = time.time()
        if keep and self.complete:
            self.rows.append(row)
        else:
            self.complete = False
            self.rows.clear()

    def write(self, line: bytes) -> None:
        """Journal only (the rows are inserted by another process, from the file)."""
        end = self.offset + len(line)
        self._map[self.offset : end] = line
        self.offset = end
        self.count += 1

    def close(self, delete: bool) -> None:
        self._map.close()
        if delete:
            self.path.unlink(missing_ok=True)
        else:
            os.ftruncate(self.fd, self.offset)  # a spill file holds just its rows
        os.close(self.fd)  # also releases the lock


def encode(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row) + b"\n"


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    data = path.read_bytes()
    used = data.find(b"\0")  # a segment left by a dead process: zeros after its last row
    for line in (data if used < 0 else data[:used]).splitlines():
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            CORRUPT.inc()  # a torn final line from a crash mid-write
    return rows


def pending(directory: Path) -> list[float]:
    """Creation times (from the names, oldest first) of the segments in ``directory``."""
    times = []
    for path in directory.glob("audit-*.jsonl"):
        try:
            times.append(int(path.name.split("-")[2]) / 1e9)
        except (IndexError, ValueError):
            continue
    return sorted(times)


def claim_unlocked(directory: Path) -> Iterator[tuple[Path, int]]:
    """Yield ``(path, fd)`` for each segment no live writer holds; the caller closes ``fd``."""
    for path in sorted(directory.glob("audit-*.jsonl")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if not path.exists():  # replayed and deleted by someone else meanwhile
            os.close(fd)
            continue
        yield path, fd
