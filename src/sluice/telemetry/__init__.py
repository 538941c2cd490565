"""Telemetry: Prometheus metrics, structured logs."""
