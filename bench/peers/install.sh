#!/usr/bin/env bash
# Install the peer routers, each into its own virtualenv under bench/peers/.venvs/ (git-ignored).
#   sglang-router  (PyPI; Rust binary in the wheel, CLI: python -m sglang_router.launch_router)
#   vllm-router    (PyPI; vLLM's Rust router forked from sgl-router, CLI: vllm-router)
# Usage: bench/peers/install.sh [python]   (default python3)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${1:-python3}"
mkdir -p "$here/.venvs"
install() {
  local name="$1" pkg="$2"
  local venv="$here/.venvs/$name"
  if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --upgrade pip
  if "$venv/bin/pip" install --quiet "$pkg"; then
    echo "$name: installed $("$venv/bin/pip" show "$pkg" | awk '/^Version/{print $2}')"
  else
    echo "$name: pip install $pkg FAILED" >&2
  fi
}
install sglang sglang-router
install vllm vllm-router
