#!/usr/bin/env bash
# Lints the proxy-wasm shell, which only compiles for wasm32 (same toolchain routes as build-wasm.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_WASM:-target/wasm}"
if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  for features in --no-default-features "--no-default-features --features rust-crypto"; do
    # shellcheck disable=SC2086
    cargo clippy --release --lib --target wasm32-wasip1 $features -- -D warnings
  done
  exit 0
fi
if [ ! -x /usr/bin/clippy-driver ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rust-web-clippy >/dev/null
fi
LLD="$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
# Both modules: the default one (signatures checked by the host) and the rust-crypto one.
for features in --no-default-features "--no-default-features --features rust-crypto"; do
  # shellcheck disable=SC2086
  PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc \
  CARGO_TARGET_WASM32_WASIP1_LINKER="$LLD" \
  CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
    /usr/bin/cargo clippy --release --lib --target wasm32-wasip1 -Zbuild-std=std,panic_abort $features -- -D warnings
done
