#!/usr/bin/env bash
# The main job on a fresh machine: install (torch's CPU wheel first, so nothing pulls CUDA), then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".[server,worker]"
exec python examples/demo.py "$@"
