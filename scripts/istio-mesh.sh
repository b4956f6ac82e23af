#!/usr/bin/env bash
# Istio's control plane without a cluster: tools/istio-validate/mesh, a small Go program in the same
# Go module (and so the same istio.io/istio pin) as scripts/istio-validate.sh's validator, runs
# istiod's discovery server in-process over Istio's fake Kubernetes client and serves the given
# manifests to Envoys over plaintext xDS (tests/mesh.rs; envoy/istio/README.md).
#
# Usage: scripts/istio-mesh.sh [-xds ADDR] [-dir DIR] FILE...   (build if needed, then run)
#        scripts/istio-mesh.sh --build                          (build only; prints the binary's path)
#
# The binary is .cache/istio-mesh/istio-mesh, rebuilt when go.mod, go.sum, mesh/main.go or the Go
# version change (the key is in .cache/istio-mesh/key). Go's module and build caches are
# .cache/go/, shared with istio-validate. The first build downloads the modules (about 0.8 GB) and
# takes about 6 minutes on two cores; a rebuild with a warm cache takes seconds.
# Exit status 3 if it cannot be built; otherwise the program's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MOD=$ROOT/tools/istio-validate
SRC=$MOD/mesh
OUT=$ROOT/.cache/istio-mesh
BIN=$OUT/istio-mesh

export GOPATH=$ROOT/.cache/go
export GOMODCACHE=$ROOT/.cache/go/mod
export GOCACHE=$ROOT/.cache/go/build
export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"

fail() { echo "istio-mesh: $*" >&2; exit 3; }

command -v go >/dev/null || fail "no 'go' on PATH: Go 1.26 or newer is needed to build tools/istio-validate/mesh"
mkdir -p "$OUT"
key=$( { go version; cat "$MOD/go.mod" "$MOD/go.sum" "$SRC/main.go"; } | sha256sum | cut -d' ' -f1)

# One build at a time; the others wait and reuse it.
exec 9>"$OUT/lock"
flock 9
if [ ! -x "$BIN" ] || [ "$(cat "$OUT/key" 2>/dev/null)" != "$key" ]; then
  echo "istio-mesh: building tools/istio-validate/mesh ($(sed -n 's/^\t\(istio.io\/istio\) \(.*\)/\1 \2/p' "$MOD/go.mod"), $(go env GOVERSION)); a first build downloads the modules and takes minutes" >&2
  start=$(date +%s)
  rm -f "$OUT/key"
  if ! (cd "$MOD" && go build -trimpath -o "$BIN.tmp" ./mesh) >"$OUT/build.log" 2>&1; then
    cat "$OUT/build.log" >&2
    fail "building tools/istio-validate/mesh failed (log above, also in .cache/istio-mesh/build.log); it needs the Go module proxy (GOPROXY=$(go env GOPROXY))"
  fi
  mv "$BIN.tmp" "$BIN"
  echo "$key" >"$OUT/key"
  echo "istio-mesh: built in $(($(date +%s) - start)) s" >&2
fi
flock -u 9
exec 9>&-

if [ "${1:-}" = "--build" ]; then
  echo "$BIN"
  exit 0
fi
exec "$BIN" "$@"
