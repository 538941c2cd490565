"""The Sluice gateway as a benchmark subprocess, in the foreground, in front of given engines.

    python -m sluice.bench.gateway_proc --port 9000 --policy least_load URL [URL ...]

Used by ``sluice bench crosscheck`` and ``bench/peers/run_peers.py``, so that the gateway under
test never shares a process (or a GIL) with the load generator.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

import uvicorn

from sluice.api.app import build_app
from sluice.api.gateway import Gateway
from sluice.api.server import uvicorn_config
from sluice.config import load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--policy", default="least_load")
    ap.add_argument("--options", default="{}", help="routing options as JSON")
    ap.add_argument(
        "--governed",
        action="store_true",
        help="keep admission (auth, limits) and governance (audit) on; off by default so that "
        "a routing comparison with peer routers, which have neither, is like for like",
    )
    ap.add_argument(
        "--kv-events",
        default="",
        help="comma-separated KV-event PUB addresses, one per URL in order: precise prefix "
        "index (the engines' ZMQ events, exact tokens from their /tokenize)",
    )
    ap.add_argument(
        "--remote-tokenize",
        action="store_true",
        help="exact prompt tokens from the engines' /tokenize (the approximate index then "
        "learns token blocks, not text blocks); implied by --kv-events",
    )
    ap.add_argument("urls", nargs="+")
    args = ap.parse_args(argv)
    if args.kv_events and len(args.kv_events.split(",")) != len(args.urls):
        ap.error("--kv-events needs one address per engine URL")
    return args


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """The gateway's configuration (as YAML data) for the benchmark's arguments."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": args.port},
        "routing": {"policy": args.policy, "options": json.loads(args.options)},
        "logging": {"level": "warning", "requests": False},
        "endpoints": [{"url": u} for u in args.urls],
    }
    if args.kv_events:
        for endpoint, address in zip(config["endpoints"], args.kv_events.split(","), strict=True):
            endpoint["labels"] = {"kv_events": address}
        config["routing"]["prefix_index"] = {"mode": "precise"}
    if args.kv_events or args.remote_tokenize:
        config["routing"]["facts"] = {"remote_tokenize": True}
    if not args.governed:
        config["admission"] = {"enabled": False}
        config["governance"] = {"ledger": {"enabled": False}}
    return config


def main() -> None:
    config = build_config(parse_args())
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)  # JSON is YAML
    cfg = load_config(f.name)
    uvicorn.Server(uvicorn_config(build_app(Gateway(cfg)), cfg)).run()


if __name__ == "__main__":
    main()
