"""Journal segments: every audit row is appended to a local file before it is queued.

A segment is JSON lines: optionally a header first (the registry the rows need, see ``raw.py``),
then one row per line, either a compact row (a JSON array, ``raw.RAW_TAG`` first, expanded into
the audit row when read) or a whole audit row (a JSON object; segments of older versions, tests).

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
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from sluice.governance.ledger import raw
from sluice.governance.ledger.metrics import CORRUPT

_T = TypeVar("_T")
SEGMENT_BYTES = 8 << 20  # a rotation every flush interval keeps segments far below this
_PAGE = mmap.PAGESIZE
# Linux 5.14+: fault pages in writable, as a write would, in one call (Python 3.11 lacks the name).
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
_populate = sys.platform == "linux"


class Segment:
    """One journal file, memory-mapped (``MAP_SHARED``): appending a row is a memory copy, not a
    system call, and the pages belong to the page cache, so they survive the process."""

    def __init__(self, path: Path, size: int = SEGMENT_BYTES, header: bytes = b"") -> None:
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
        self._map[: len(header)] = header
        self.offset = len(header)
        self.populated = 0  # pages below this were faulted in ahead (``prefault``)
        # In-memory copy (whole or compact rows), while it is complete.
        self.rows: list[dict[str, Any] | list[Any]] = []
        self.complete = True  # False once a row overflowed the in-memory queue
        self.count = 0
        self.first_ts: float | None = None

    def prefault(self, upto: int) -> None:
        """Fault in the pages up to ``upto`` now, in one system call off the request path, so
        appends there are plain memory copies: on a fresh file page a first write otherwise
        traps into the filesystem (block reservation, mtime), which costs the request path
        several microseconds per page. Best effort: without kernel support appends fault."""
        global _populate
        end = min(self.size, -(-upto // _PAGE) * _PAGE)
        if not _populate or end <= self.populated:
            return
        try:
            self._map.madvise(_MADV_POPULATE_WRITE, self.populated, end - self.populated)
        except (OSError, ValueError):
            _populate = False
            return
        self.populated = end

    def fits(self, n: int) -> bool:
        return self.offset + n <= self.size

    def append(self, row: dict[str, Any] | list[Any], line: bytes, keep: bool) -> None:
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


# The header of the last segment read and its registry (one gateway writes the same header into
# every segment, so it is parsed once).
_last_header: tuple[bytes, raw.Models] = (b"", {})


def _models(line: bytes) -> raw.Models:
    global _last_header
    if line != _last_header[0]:
        _last_header = (line, raw.models_from_header(orjson.loads(line)))
    return _last_header[1]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The audit rows of a segment (compact rows expanded with the segment's header)."""
    return _read(path, raw.expand, _same)


def read_params(path: Path) -> list[tuple[Any, ...]]:
    """The rows of a segment as the insert binds them (``raw.values``, JSON columns as text)."""
    return _read(path, _compact_params, raw.row_params)


def _same(row: dict[str, Any]) -> dict[str, Any]:
    return row


def _compact_params(row: list[Any], models: raw.Models) -> tuple[Any, ...]:
    return raw.values(row, models, encode_json=True)


def _read(
    path: Path,
    compact: Callable[[list[Any], raw.Models], _T],
    whole: Callable[[dict[str, Any]], _T],
) -> list[_T]:
    out: list[_T] = []
    data = path.read_bytes()
    used = data.find(b"\0")  # a segment left by a dead process: zeros after its last row
    models: raw.Models = {}
    for line in (data if used < 0 else data[:used]).splitlines():
        if not line.strip():
            continue
        try:
            if line.startswith(raw.HEADER_PREFIX):
                models = _models(line)
                continue
            obj = orjson.loads(line)
            out.append(compact(obj, models) if isinstance(obj, list) else whole(obj))
        except (orjson.JSONDecodeError, IndexError, TypeError, ValueError, AttributeError):
            CORRUPT.inc()  # a torn final line from a crash mid-write
    return out


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
