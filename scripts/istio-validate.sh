#!/usr/bin/env bash
# Validates Istio manifests offline with Istio's own code: tools/istio-validate, a small Go
# program importing istio.io/istio (the version pinned in tools/istio-validate/go.mod), runs the
# validators istiod's admission webhook runs after istioctl validate's strict conversion.
#
# Usage: scripts/istio-validate.sh [FILE...]     (default: envoy/istio/*.yaml)
#        scripts/istio-validate.sh --build       (build only)
#
# Built by scripts/istio-build.sh (cached under .cache/istio-validate/).
# Exit status: the validator's (0 valid, 1 a document invalid), 3 if it cannot be built.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/istio-build.sh"
istio_build validate .

if [ "${1:-}" = "--build" ]; then
  exit 0
fi
if [ $# -eq 0 ]; then
  set -- "$ROOT"/envoy/istio/*.yaml
fi
exec "$BIN" "$@"
