#!/usr/bin/env bash
# Istio's control plane without a cluster: tools/istio-validate/mesh, a small Go program in the same
# Go module (and so the same istio.io/istio pin) as scripts/istio-validate.sh's validator, runs
# istiod's discovery server in-process over Istio's fake Kubernetes client and serves the given
# manifests to Envoys over plaintext xDS (tests/mesh.rs; envoy/istio/README.md).
#
# Usage: scripts/istio-mesh.sh [-xds ADDR] [-dir DIR] FILE...   (build if needed, then run)
#        scripts/istio-mesh.sh --build                          (build only; prints the binary's path)
#
# Built by scripts/istio-build.sh (cached under .cache/istio-mesh/).
# Exit status 3 if it cannot be built; otherwise the program's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/istio-build.sh"
istio_build mesh ./mesh

if [ "${1:-}" = "--build" ]; then
  echo "$BIN"
  exit 0
fi
exec "$BIN" "$@"
