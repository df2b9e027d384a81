#!/usr/bin/env bash
# Builds (once) and installs llama-cpp-python into the venv given as $1.
# pip's own wheel cache does not key on CMAKE_ARGS, so a wheel built with other flags (say CUDA,
# or -march=native on another CPU) would be reused silently. This cache keys on the version, the
# build flags, the machine and the CPU's instruction set, and pip's cache is bypassed.
set -euo pipefail
venv=${1:?usage: llama_wheel.sh VENV}
version=${LLAMA_CPP_VERSION:-0.3.36}
cpu_flags=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | tr ' ' '\n' | sort | tr '\n' ' ')
key=$(printf '%s|%s|%s|%s' "$version" "${CMAKE_ARGS:-}" "$(uname -m)" "$cpu_flags" | sha256sum | cut -c1-16)
cache=${INFERENCE_WHEEL_CACHE:-$HOME/.cache/inference-service/wheels}/$key
installed=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)
if [ "$installed" = "$version" ] && [ -f "$venv/.llama-wheel-key" ] && [ "$(cat "$venv/.llama-wheel-key")" = "$key" ]; then
  exit 0
fi
if ! ls "$cache"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $version (CMAKE_ARGS='${CMAKE_ARGS:-}'), about 9 minutes on 2 cores" >&2
  mkdir -p "$cache.tmp"
  "$venv/bin/python" -m pip wheel -q --no-cache-dir --no-deps -w "$cache.tmp" "llama-cpp-python==$version"
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$cache"/llama_cpp_python-"$version"-*.whl
echo "$key" > "$venv/.llama-wheel-key"
