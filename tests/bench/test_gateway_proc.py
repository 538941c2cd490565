"""The benchmark's gateway process: the configuration it runs for each kind of comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice.bench.gateway_proc import build_config, parse_args
from sluice.bench.procs import gateway_command
from sluice.config import load_config

URLS = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]


def _load(config: dict, tmp_path: Path):
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(config))
    return load_config(str(path), env={})


def test_default_is_approximate_with_admission_and_ledger_off(tmp_path: Path) -> None:
    cfg = _load(
        build_config(parse_args(["--port", "9000", "--policy", "affinity_cost", *URLS])), tmp_path
    )
    assert cfg.routing.policy == "affinity_cost"
    assert cfg.routing.prefix_index.mode == "approximate"
    assert [e.url for e in cfg.endpoints] == URLS
    assert not cfg.admission.enabled  # type: ignore[attr-defined]


def test_kv_events_give_precise_mode_with_one_address_per_engine(tmp_path: Path) -> None:
    events = ["tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558"]
    cmd = gateway_command(9000, "affinity_cost", URLS, events)
    args = parse_args(cmd[cmd.index("--port") :])
    cfg = _load(build_config(args), tmp_path)
    assert cfg.routing.prefix_index.mode == "precise"
    assert cfg.routing.facts.remote_tokenize  # exact tokens, as the engines hash them
    assert [e.labels["kv_events"] for e in cfg.endpoints] == events


def test_kv_events_must_name_every_engine() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--port", "9000", "--kv-events", "tcp://127.0.0.1:5557", *URLS])


def test_remote_tokenize_keeps_the_approximate_index_on_exact_tokens(tmp_path: Path) -> None:
    cmd = gateway_command(9000, "affinity_cost", URLS, remote_tokenize=True)
    cfg = _load(build_config(parse_args(cmd[cmd.index("--port") :])), tmp_path)
    assert cfg.routing.prefix_index.mode == "approximate"
    assert cfg.routing.facts.remote_tokenize
    assert all(not e.labels for e in cfg.endpoints)
