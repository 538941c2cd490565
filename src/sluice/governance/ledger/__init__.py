"""The audit ledger: one row per request, written off the request path."""

from sluice.governance.ledger.record import AuditRecord, prompt_hash, sampling
from sluice.governance.ledger.writer import AuditWriter

__all__ = ["AuditRecord", "AuditWriter", "prompt_hash", "sampling"]
