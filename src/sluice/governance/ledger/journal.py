"""Journal segments: every audit row is appended to a local file before it is queued.

A write to the page cache survives ``kill -9`` of the process, so a row for an answered request
is never lost: the writer deletes a segment only after all its rows are committed, and whatever is
left (a crash, a database outage, a queue overflow) is replayed from the files. Each open segment
is ``flock``-ed by its writer; any process may replay segments nobody holds.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from sluice.governance.ledger.metrics import CORRUPT


class Segment:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.rows: list[dict[str, Any]] = []  # in-memory copy, while it is complete
        self.complete = True  # False once a row overflowed the in-memory queue
        self.count = 0
        self.first_ts: float | None = None

    def append(self, row: dict[str, Any], line: bytes, keep: bool) -> None:
        os.write(self.fd, line)
        self.count += 1
        if self.first_ts is None:
            self.first_ts = time.time()
        if keep and self.complete:
            self.rows.append(row)
        else:
            self.complete = False
            self.rows.clear()

    def close(self, delete: bool) -> None:
        if delete:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # also releases the lock


def encode(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row) + b"\n"


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            CORRUPT.inc()  # a torn final line from a crash mid-write
    return rows


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
