#!/usr/bin/env bash
# Validates Istio manifests offline with Istio's own code: tools/istio-validate, a small Go
# program importing istio.io/istio (the version pinned in tools/istio-validate/go.mod), runs the
# validators istiod's admission webhook runs after istioctl validate's strict conversion.
#
# Usage: scripts/istio-validate.sh [FILE...]     (default: envoy/istio/*.yaml)
#        scripts/istio-validate.sh --build       (build only)
#
# The binary is .cache/istio-validate/istio-validate, rebuilt when go.mod, go.sum, main.go or the
# Go version change (the key is in .cache/istio-validate/key). Go's module and build caches are
# under .cache/go/, so a fresh clone builds it the same way; a build needs the Go module proxy.
# Exit status: the validator's (0 valid, 1 a document invalid), 3 if it cannot be built.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=$ROOT/tools/istio-validate
OUT=$ROOT/.cache/istio-validate
BIN=$OUT/istio-validate

export GOPATH=$ROOT/.cache/go
export GOMODCACHE=$ROOT/.cache/go/mod
export GOCACHE=$ROOT/.cache/go/build
# go.mod names go 1.26.0: the machine's Go (1.26.8) builds it; never fetch another toolchain.
export GOTOOLCHAIN=local
# -mod=readonly: go.sum pins every module; -modcacherw: .cache/ can be deleted without chmod.
export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"

fail() { echo "istio-validate: $*" >&2; exit 3; }

command -v go >/dev/null || fail "no 'go' on PATH: Go 1.26 or newer is needed to build Istio's validator (tools/istio-validate)"
mkdir -p "$OUT"
key=$( { go version; cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go"; } | sha256sum | cut -d' ' -f1)

# One build at a time (tests run in parallel); the others wait and reuse it.
exec 9>"$OUT/lock"
flock 9
if [ ! -x "$BIN" ] || [ "$(cat "$OUT/key" 2>/dev/null)" != "$key" ]; then
  echo "istio-validate: building tools/istio-validate ($(sed -n 's/^\t\(istio.io\/istio\) \(.*\)/\1 \2/p' "$SRC/go.mod"), $(go env GOVERSION)); the first build downloads the modules and takes minutes" >&2
  start=$(date +%s)
  rm -f "$OUT/key"
  if ! (cd "$SRC" && go build -trimpath -o "$BIN.tmp" .) >"$OUT/build.log" 2>&1; then
    cat "$OUT/build.log" >&2
    fail "building tools/istio-validate failed (log above, also in .cache/istio-validate/build.log); it needs the Go module proxy (GOPROXY=$(go env GOPROXY))"
  fi
  mv "$BIN.tmp" "$BIN"
  echo "$key" >"$OUT/key"
  echo "istio-validate: built in $(($(date +%s) - start)) s" >&2
fi
flock -u 9

if [ "${1:-}" = "--build" ]; then
  exit 0
fi
if [ $# -eq 0 ]; then
  set -- "$ROOT"/envoy/istio/*.yaml
fi
exec "$BIN" "$@"
