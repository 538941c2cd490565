"""Start the Sluice gateway in the foreground in front of given engines, for run_peers.py.

.venv/bin/python bench/peers/sluice_gateway.py --port 9000 --policy least_load URL [URL ...]
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
    ap.add_argument("urls", nargs="+")
    args = ap.parse_args()
    config = {
        "server": {"host": "127.0.0.1", "port": args.port},
        "routing": {"policy": args.policy, "options": json.loads(args.options)},
        "logging": {"level": "warning", "requests": False},
        "endpoints": [{"url": u} for u in args.urls],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)  # JSON is YAML
    cfg = load_config(f.name)
    uvicorn.Server(uvicorn_config(build_app(Gateway(cfg)), cfg)).run()


if __name__ == "__main__":
    main()
