"""The per-request metric numbers render as Prometheus families; the request log line's shape."""

from __future__ import annotations

import io
import logging
import re

import orjson
import structlog

from sluice.telemetry import logs
from sluice.telemetry.logs import RequestLog, configure_logging
from sluice.telemetry.metrics import GatewayMetrics, Hist


def _sample(text: str, line: str) -> float:
    found = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
    assert found is not None, line
    return float(found.group(1))


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    hist = Hist((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        hist.observe(value)
    assert hist.counts == [2, 2, 1] and hist.count == 5
    assert abs(hist.sum - 8.65) < 1e-9


def test_request_series_render_with_documented_names() -> None:
    metrics = GatewayMetrics(lambda: [])
    metrics.observe_request("m", "e0", 200, 0.3, 0.02, 7, 3, 2)
    metrics.observe_request("m", "e0", 200, 0.004, None, 7, 3, 0)
    metrics.observe_request("m", "none", 503, 0.001, None, 0, 0, 0)
    metrics.decision.observe(0.00003)
    text = metrics.render().decode()
    assert _sample(text, 'sluice_requests_total{endpoint="e0",model="m",status="200"}') == 2
    assert _sample(text, 'sluice_requests_total{endpoint="none",model="m",status="503"}') == 1
    e2e = "sluice_request_duration_seconds"
    assert _sample(text, f'{e2e}_bucket{{le="0.005",model="m"}}') == 2
    assert _sample(text, f'{e2e}_bucket{{le="+Inf",model="m"}}') == 3
    assert _sample(text, f'{e2e}_count{{model="m"}}') == 3
    assert _sample(text, 'sluice_time_to_first_token_seconds_count{model="m"}') == 1
    assert _sample(text, 'sluice_tokens_total{kind="prompt",model="m"}') == 14
    assert _sample(text, 'sluice_tokens_total{kind="cached",model="m"}') == 2
    assert _sample(text, 'sluice_routing_decision_seconds_bucket{le="5e-05"}') == 1
    assert _sample(text, "sluice_routing_decision_seconds_count") == 1


def test_request_log_line_shape_buffering_and_level() -> None:
    stream = io.BytesIO()
    configure_logging("info", stream)  # type: ignore[arg-type]
    try:
        log = RequestLog()
        log.line({"event": "request", "request_id": "r1", "status": 200})
        log.info("request", request_id="r2", status=499)
        log.flush()
        first, second = (orjson.loads(x) for x in stream.getvalue().splitlines())
        assert first["request_id"] == "r1" and first["level"] == "info"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["timestamp"])
        assert second["event"] == "request" and second["status"] == 499
        quiet = io.BytesIO()
        configure_logging("warning", quiet)  # type: ignore[arg-type]
        log.line({"event": "request"})
        log.flush()
        assert quiet.getvalue() == b""
    finally:
        structlog.reset_defaults()
        logs._SINK.update(stream=None, level=logging.INFO)  # back to stdout, as before
