#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent; torch first, as the CPU wheel 2.13.0,
# so that nothing pulls a CUDA build) and runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".[dev]"
# Debian's chromium for the report's browser test (skipped when already there).
[ -x /usr/bin/chromium ] || { SUDO=$([ "$(id -u)" = 0 ] || echo sudo); $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; }
exec python -m pytest -q -p no:cacheprovider "$@"
