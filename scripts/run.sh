#!/usr/bin/env bash
# Sets everything up, then runs the service (front on :8085 plus its model workers) on the
# embedded default preset. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/honcho start -f Procfile
