#!/usr/bin/env bash
# Sets everything up, then runs every test (unit tests, and integration tests on the real
# Redis with the real tiny models), then ruff and mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy api worker orchestration presets
.venv/bin/python -m pytest -q "$@"
