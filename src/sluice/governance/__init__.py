"""Governance: audit ledger, guardrails, metering and prices."""
