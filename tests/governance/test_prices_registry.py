"""Prices, cost arithmetic, the model registry, prompt hashing and redaction."""

from __future__ import annotations

import pytest

from sluice.api.context import RequestContext
from sluice.governance.config import GovernanceConfig
from sluice.governance.gateway import Ledger
from sluice.governance.ledger.record import AuditRecord, prompt_hash, prompt_text, sampling
from sluice.governance.prices import Prices, cost
from sluice.governance.redact import redact
from sluice.governance.registry import ModelEntry, Registry


def test_cost_charges_cached_prompt_tokens_at_the_cached_price() -> None:
    p = Prices(input_per_m=1.0, output_per_m=4.0, cached_per_m=0.1)
    assert cost(p, prompt=1_000_000, completion=0) == pytest.approx(1.0)
    assert cost(p, prompt=1_000_000, completion=500_000, cached=400_000) == pytest.approx(
        0.6 + 0.04 + 2.0
    )
    assert cost(Prices(input_per_m=2.0), 1000, 0, cached=1000) == pytest.approx(0.002)
    assert cost(None, 10, 10) == 0.0


def test_gpu_hour_price_is_attributed_by_tokens() -> None:
    p = Prices(gpu_hour_usd=3.6, gpu_tokens_per_hour=3_600_000)
    assert cost(p, prompt=900, completion=100) == pytest.approx(0.001)


def test_registry_entries_render_as_openai_models_with_metadata() -> None:
    reg = Registry(
        [
            ModelEntry(
                name="llama-3-8b",
                version="3.1",
                revision="abc123",
                weights_digest="sha256:ff",
                context_length=8192,
                pools=["a100"],
                prices=Prices(input_per_m=0.1, output_per_m=0.2),
            )
        ]
    )
    obj = reg.get("llama-3-8b").openai_object()  # type: ignore[union-attr]
    assert obj["id"] == "llama-3-8b" and obj["object"] == "model"
    assert obj["max_model_len"] == 8192
    assert obj["sluice"]["weights_digest"] == "sha256:ff"
    assert obj["sluice"]["prices"] == {"input_per_m": 0.1, "output_per_m": 0.2}
    assert "llama-3-8b" in reg and reg.get("other") is None
    with pytest.raises(ValueError):
        Registry([ModelEntry(name="x"), ModelEntry(name="x")])


def test_prompt_hash_is_canonical_and_sampling_excludes_the_prompt() -> None:
    a = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}
    b = {"messages": [{"content": "hi", "role": "user"}], "model": "other", "max_tokens": 5}
    assert prompt_hash(a) == prompt_hash(b)
    assert prompt_hash(a) != prompt_hash({"messages": [{"role": "user", "content": "hi!"}]})
    assert len(prompt_hash({"prompt": "x"})) == 64
    assert sampling(a) == {"temperature": 0.2}
    assert prompt_text(a) == "user: hi"


def test_redaction_removes_personal_data_and_secrets() -> None:
    text = (
        "mail bob@example.com, card 4111 1111 1111 1111, call +44 20 7946 0958, "
        "key sk-sluice-0123456789ab-" + "x" * 43 + " from 10.1.2.3; Bearer abcdefghijklmnop"
    )
    out = redact(text)
    for secret in ("bob@example.com", "4111", "7946", "0123456789ab", "10.1.2.3", "abcdefghij"):
        assert secret not in out
    assert "[EMAIL]" in out and "[CARD]" in out and "[PHONE]" in out and "[SECRET]" in out
    assert redact("order 1234 shipped") == "order 1234 shipped"


def test_the_gateway_builds_every_audit_column_and_nothing_else() -> None:
    ctx = RequestContext(
        request_id="r1",
        path="/v1/chat/completions",
        headers={},
        client=None,
        started=0.0,
        started_wall=1.0,
        body={"messages": [{"role": "user", "content": "hi"}], "temperature": 0.1},
        model="m",
    )
    ledger = Ledger(None, GovernanceConfig(), Registry([]), None)  # type: ignore[arg-type]
    row = ledger.record(ctx)
    assert list(row) == list(AuditRecord(request_id="r1", ts=1.0, status=0).row())
    assert row["sampling"] == {"temperature": 0.1} and len(row["prompt_hash"]) == 64
