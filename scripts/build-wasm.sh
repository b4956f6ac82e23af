#!/usr/bin/env bash
# Builds dist/keycloak_pep.wasm (wasm32-wasip1, release) by whichever toolchain route this machine allows:
#   1. rustup's own wasm32-wasip1 target, when installed;
#   2. Debian's rustc-web + rust-web-src + wasi-libc, building std with -Zbuild-std
#      (installed here with apt when running as root and missing);
#   3. otherwise stop and say how to get either.
# Usage: scripts/build-wasm.sh [MANIFEST OUTPUT]   (default: the filter -> dist/keycloak_pep.wasm)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=wasm32-wasip1
MANIFEST=${1:-Cargo.toml}
OUT=${2:-dist/keycloak_pep.wasm}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_WASM:-target/wasm}"
mkdir -p "$(dirname "$OUT")"

have_rustup_target() {
  command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"
}
have_debian_route() {
  [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/src/rust/library ] && [ -d /usr/lib/wasm32-wasi ]
}
rustup_lld() {
  local sysroot
  sysroot=$(rustc --print sysroot 2>/dev/null) || return 1
  local lld="$sysroot/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
  [ -x "$lld" ] && echo "$lld"
}

# The filter's default module checks signatures through the host (no RustCrypto inside);
# KCPEP_WASM_FEATURES=rust-crypto builds the one that checks them in wasm.
FEATURE_ARGS=()
if [ "$MANIFEST" = Cargo.toml ]; then
  # The filter's own code optimized for size ("s"; the -Zbuild-std route below goes to "z" with
  # the cache hit's path marked for speed).
  export CARGO_PROFILE_RELEASE_OPT_LEVEL="${CARGO_PROFILE_RELEASE_OPT_LEVEL:-s}"
  FEATURE_ARGS=(--no-default-features)
  [ -n "${KCPEP_WASM_FEATURES:-}" ] && FEATURE_ARGS+=(--features "$KCPEP_WASM_FEATURES")
fi

if have_rustup_target; then
  echo "build-wasm: route 1 (rustup target $TARGET)"
  cargo build --release --lib --target "$TARGET" --manifest-path "$MANIFEST" ${FEATURE_ARGS[@]+"${FEATURE_ARGS[@]}"}
else
  if ! have_debian_route && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "build-wasm: installing Debian's rustc-web, cargo-web, rust-web-src, wasi-libc (no wasm32 std in rustup here)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web rust-web-src wasi-libc >/dev/null
  fi
  LLD=$(rustup_lld || true)
  if have_debian_route && [ -n "$LLD" ]; then
    echo "build-wasm: route 2 (Debian rustc-web + build-std, linker $LLD)"
    # Building std here also lets the filter shed what a proxy module never uses (docs/benchmark.md,
    # "Module size"): std's panic messages (a panic traps at once: no input can cause one, and
    # Envoy logs the trap) and the source locations they would have named, std's speed-for-size
    # trade-offs; and the filter and every dependency are built at "z", except the functions a
    # cache hit or a DPoP proof runs, which `--cfg kcpep_size` marks `optimize(speed)`, and the
    # crates below (KCPEP_OWN_OPT_LEVEL sets
    # the filter's own level): no more CPU per cache hit than the former "s" build (make bench,
    # alternating runs; KCPEP_DEPS_OPT_LEVEL the dependencies').
    SIZE_RUSTFLAGS="" SIZE_ARGS=()
    if [ "$MANIFEST" = Cargo.toml ] && [ "${KCPEP_WASM_SIZE:-1}" != 0 ]; then
      SIZE_RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none --cfg kcpep_size ${KCPEP_X_RUSTFLAGS:-}"
      CARGO_PROFILE_RELEASE_OPT_LEVEL="${KCPEP_OWN_OPT_LEVEL:-z}"
      DEPS_LEVEL=${KCPEP_DEPS_OPT_LEVEL:-z}
      case $DEPS_LEVEL in [0-9]) ;; *) DEPS_LEVEL="\"$DEPS_LEVEL\"" ;; esac
      SIZE_ARGS=(-Zbuild-std-features=optimize_for_size
        --config "profile.release.package.\"*\".opt-level=$DEPS_LEVEL")
      # The crates every request runs through, at 3 (std's allocator and copies, SHA-256,
      # base64, JSON, the hash tables): 14 KB for less CPU on a cache hit and on a DPoP hit
      # (docs/benchmark.md, "The runs of 2026-12-07, evening"). KCPEP_SPEED_CRATES overrides.
      for crate in ${KCPEP_SPEED_CRATES-core alloc std dlmalloc compiler_builtins sha2 base64 serde_json hashbrown indexmap}; do
        SIZE_ARGS+=(--config "profile.release.package.$crate.opt-level=3")
      done
    fi
    RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc \
    CARGO_TARGET_WASM32_WASIP1_LINKER="$LLD" \
    CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-L /usr/lib/wasm32-wasi $SIZE_RUSTFLAGS" \
      /usr/bin/cargo build --release --lib --target "$TARGET" --manifest-path "$MANIFEST" -Zbuild-std=std,panic_abort \
        ${SIZE_ARGS[@]+"${SIZE_ARGS[@]}"} ${FEATURE_ARGS[@]+"${FEATURE_ARGS[@]}"}
  else
    cat >&2 <<MSG
build-wasm: no way to build for $TARGET on this machine. Either
  - rustup target add $TARGET            (needs rustup's download server), or
  - apt-get install rustc-web cargo-web rust-web-src wasi-libc   (Debian 12; plus rustup's rust-lld as linker)
MSG
    exit 1
  fi
fi
NAME=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$MANIFEST" | head -1 | tr - _)
[ "$MANIFEST" = Cargo.toml ] && NAME=keycloak_pep
cp "$CARGO_TARGET_DIR/$TARGET/release/$NAME.wasm" "$OUT"
# Binaryen's wasm-opt -O3 on the filter: a seventh smaller at the same speed (make bench,
# alternating runs), where rustc's opt-level "z" costs 13 % on the hit path. Debian's binaryen is
# installed when missing (as root); KCPEP_WASM_OPT=0 skips it (and `make profile`, which needs
# the names, does).
if [ "$MANIFEST" = Cargo.toml ] && [ "${KCPEP_WASM_OPT:-1}" != 0 ]; then
  if ! command -v wasm-opt >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "build-wasm: installing Debian's binaryen (wasm-opt)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen >/dev/null
  fi
  if command -v wasm-opt >/dev/null 2>&1; then
    # the features rustc's wasm32-wasip1 target emits
    wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
      --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types "$OUT" -o "$OUT.opt"
    mv "$OUT.opt" "$OUT"
  else
    echo "build-wasm: no wasm-opt (Debian: apt-get install binaryen): the module stays as rustc made it" >&2
  fi
fi
SIZE=$(stat -c %s "$OUT")
if [ "$MANIFEST" = Cargo.toml ] && [ -z "${KCPEP_WASM_FEATURES:-}" ]; then
  # the budget is the default module's (the rust-crypto build carries RustCrypto on purpose)
  BUDGET=$(sed -n 's/^wasm-budget-bytes *= *\([0-9]*\).*/\1/p' Cargo.toml | head -1)
  if [ -n "$BUDGET" ] && [ "$SIZE" -gt "$BUDGET" ]; then
    echo "build-wasm: $OUT ($(( SIZE / 1024 )) KiB, $SIZE bytes): over the budget of $BUDGET bytes by $(( SIZE - BUDGET ))"
  else
    echo "build-wasm: $OUT ($(( SIZE / 1024 )) KiB, $SIZE bytes): within the budget of ${BUDGET:-?} bytes"
  fi
else
  echo "build-wasm: $OUT ($(( SIZE / 1024 )) KiB)"
fi
