"""The Sluice gateway as a benchmark subprocess, in the foreground, in front of given engines.

    python -m sluice.bench.gateway_proc --port 9000 --policy least_load URL [URL ...]

Used by ``sluice bench crosscheck`` and ``bench/peers/run_peers.py``, so that the gateway under
test never shares a process (or a GIL) with the load generator.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import uvicorn

from sluice.api.app import build_app
from sluice.api.gateway import Gateway
from sluice.api.server import uvicorn_config
from sluice.config import load_config


def main() -> None:
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
    ap.add_argument("urls", nargs="+")
    args = ap.parse_args()
    config = {
        "server": {"host": "127.0.0.1", "port": args.port},
        "routing": {"policy": args.policy, "options": json.loads(args.options)},
        "logging": {"level": "warning", "requests": False},
        "endpoints": [{"url": u} for u in args.urls],
    }
    if not args.governed:
        config["admission"] = {"enabled": False}
        config["governance"] = {"ledger": {"enabled": False}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)  # JSON is YAML
    cfg = load_config(f.name)
    uvicorn.Server(uvicorn_config(build_app(Gateway(cfg)), cfg)).run()


if __name__ == "__main__":
    main()
