"""One JSON log line per request (no prompt text) and the documented metric names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import structlog

from sluice.telemetry.logs import configure_logging
from tests.api.engine_double import MODEL, EngineDouble
from tests.api.helpers import gateway_config, running_gateway

DOCUMENTED = [
    "sluice_requests_total",
    "sluice_request_duration_seconds",
    "sluice_time_to_first_token_seconds",
    "sluice_tokens_total",
    "sluice_upstream_retries_total",
    "sluice_endpoint_ejections_total",
    "sluice_routing_decision_seconds",
    "sluice_endpoint_up",
    "sluice_endpoint_ejected",
    "sluice_endpoint_in_flight",
    "sluice_endpoint_running",
    "sluice_endpoint_waiting",
    "sluice_endpoint_kv_cache_usage",
    "sluice_requests_in_flight",
]


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "log.jsonl"
    with path.open("wb") as stream:
        configure_logging("info", stream)  # type: ignore[arg-type]
        yield path
    structlog.reset_defaults()


async def test_one_json_line_per_request_without_prompt_text(log_file: Path) -> None:
    engine = await EngineDouble().start()
    config = gateway_config([engine.url], **{"logging.requests": True})
    body = {"model": MODEL, "messages": [{"role": "user", "content": "SECRET-PROMPT"}]}
    try:
        async with running_gateway(config) as (url, gw), httpx.AsyncClient() as client:
            await client.post(
                url + "/v1/chat/completions", json=body, headers={"x-request-id": "r1"}
            )
            await client.post(url + "/v1/chat/completions", json={**body, "stream": True})
            metrics = gw.metrics.render().decode()
    finally:
        await engine.stop()
    text = log_file.read_text()
    assert "SECRET-PROMPT" not in text
    lines = [orjson.loads(x) for x in text.splitlines()]
    requests = [x for x in lines if x["event"] == "request"]
    assert len(requests) == 2
    first, second = requests
    assert first["request_id"] == "r1" and first["status"] == 200 and first["endpoint"] == "e0"
    assert first["prompt_tokens"] == 7 and first["completion_tokens"] == 3
    assert second["stream"] is True and second["ttft_ms"] is not None and second["e2e_ms"] > 0
    for name in DOCUMENTED:  # declared, even when no sample exists yet
        assert f"# TYPE {name} " in metrics, name
    documented = Path(__file__).parents[2] / "docs" / "metrics.md"
    if documented.exists():
        for name in DOCUMENTED:
            assert name in documented.read_text(), f"{name} missing from docs/metrics.md"
