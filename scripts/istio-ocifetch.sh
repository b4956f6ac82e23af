#!/usr/bin/env bash
# Istio's own Wasm image fetcher on the image `make oci` builds: tools/istio-validate/ocifetch, a
# small Go program in the same Go module (and so the same istio.io/istio pin) as
# scripts/istio-validate.sh's validator, serves a container registry in-process
# (go-containerregistry's pkg/registry) on 127.0.0.1, pushes the OCI layout's image to it and pulls
# it with istio.io/istio/pkg/wasm (ImageFetcher.PrepareFetch, and LocalFileCache.Get as
# istio-agent calls it) with the layout's manifest digest and with a wrong sha256; it prints the
# result as JSON (tests/istio.rs; envoy/istio/README.md).
#
# Usage: scripts/istio-ocifetch.sh [-tag TAG] LAYOUT MODULE SHA256   (build if needed, then run)
#        scripts/istio-ocifetch.sh --build                           (build only; prints the binary's path)
#
# Built by scripts/istio-build.sh (cached under .cache/istio-ocifetch/).
# Exit status 3 if it cannot be built; otherwise the program's (0 all held, 1 not, 2 cannot run).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/istio-build.sh"
istio_build ocifetch ./ocifetch

if [ "${1:-}" = "--build" ]; then
  echo "$BIN"
  exit 0
fi
exec "$BIN" "$@"
