#!/usr/bin/env bash
# Gateway overhead benchmark: needs nginx, wrk and taskset (apt-get install nginx-light wrk).
# Usage: bench/gateway_overhead/run.sh [--duration 10] [--connections 1,32,128] [--no-request-log]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python bench/gateway_overhead/run.py "$@"
