"""Prometheus metrics of the audit ledger writer."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

WRITTEN = Counter("sluice_ledger_rows_written_total", "Audit rows committed to the database.")
SPILLED = Counter(
    "sluice_ledger_rows_spilled_total",
    "Audit rows that could not go straight to the database (queue overflow or database error) "
    "and wait in the spill files for replay.",
    ["reason"],
)
REPLAYED = Counter(
    "sluice_ledger_rows_replayed_total", "Audit rows replayed from spill files into the database."
)
CORRUPT = Counter(
    "sluice_ledger_corrupt_lines_total", "Unreadable lines skipped in spill files (torn writes)."
)
QUEUE_DEPTH = Gauge("sluice_ledger_queue_depth", "Audit rows waiting in memory for the writer.")
PENDING_SEGMENTS = Gauge(
    "sluice_ledger_spill_segments", "Spill files waiting for replay (this process's view)."
)
LAG = Gauge(
    "sluice_ledger_lag_seconds", "Age of the oldest audit row not yet committed to the database."
)
DB_UP = Gauge("sluice_ledger_database_up", "1 when the last database write succeeded.")
