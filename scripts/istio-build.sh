# Sourced by scripts/istio-validate.sh, istio-mesh.sh and istio-ocifetch.sh: builds one program of
# the Go module tools/istio-validate (one go.mod, so one istio.io/istio pin for all three) into
# .cache/istio-NAME/istio-NAME, rebuilt when go.mod, go.sum, the program's Go files or the Go
# version change (the key is in .cache/istio-NAME/key). Go's module and build caches are under
# .cache/go/ and shared: the first build of all downloads the modules (about 0.8 GB) and takes
# minutes on two cores; a later one takes seconds to a minute. One build of a program at a time
# (tests run in parallel); the others wait and reuse it. Exit status 3 when it cannot be built.
#
# istio_build NAME PACKAGE   (PACKAGE: the program's directory in the module, "." or "./mesh")
# sets BIN to the binary's path.

ISTIO_MOD=$ROOT/tools/istio-validate

export GOPATH=$ROOT/.cache/go
export GOMODCACHE=$ROOT/.cache/go/mod
export GOCACHE=$ROOT/.cache/go/build
# go.mod names go 1.26.0: the machine's Go (1.26.8) builds it; never fetch another toolchain.
export GOTOOLCHAIN=local
# -mod=readonly: go.sum pins every module; -modcacherw: .cache/ can be deleted without chmod.
# The programs are linked without symbol tables and DWARF (-ldflags="-s -w": each link of these
# 200 MB binaries takes half the time; a panic still prints its stack).
export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"

istio_build() {
  local name=$1 pkg=$2 out key start
  out=$ROOT/.cache/istio-$name
  BIN=$out/istio-$name
  fail() { echo "istio-$name: $*" >&2; exit 3; }
  command -v go >/dev/null || fail "no 'go' on PATH: Go 1.26 or newer is needed to build tools/istio-validate/$pkg"
  mkdir -p "$out"
  key=$( { go version; echo s-w; cat "$ISTIO_MOD/go.mod" "$ISTIO_MOD/go.sum" "$ISTIO_MOD/$pkg"/*.go; } | sha256sum | cut -d' ' -f1)
  exec 9>"$out/lock"
  flock 9
  if [ ! -x "$BIN" ] || [ "$(cat "$out/key" 2>/dev/null)" != "$key" ]; then
    echo "istio-$name: building tools/istio-validate/$pkg ($(sed -n 's/^\t\(istio.io\/istio\) \(.*\)/\1 \2/p' "$ISTIO_MOD/go.mod"), $(go env GOVERSION)); a first build downloads the modules and takes minutes" >&2
    start=$(date +%s)
    rm -f "$out/key"
    if ! (cd "$ISTIO_MOD" && go build -trimpath -ldflags="-s -w" -o "$BIN.tmp" "$pkg") >"$out/build.log" 2>&1; then
      cat "$out/build.log" >&2
      fail "building tools/istio-validate/$pkg failed (log above, also in .cache/istio-$name/build.log); it needs the Go module proxy (GOPROXY=$(go env GOPROXY))"
    fi
    mv "$BIN.tmp" "$BIN"
    echo "$key" >"$out/key"
    echo "istio-$name: built in $(($(date +%s) - start)) s" >&2
  fi
  flock -u 9
  exec 9>&-
}
