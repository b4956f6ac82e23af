#!/usr/bin/env bash
# make profile: where a cache hit's time goes inside the module. Builds the filter unstripped
# (function names kept), runs the memo-hit path 200,000 times under the wasmtime host with
# wasmtime's perf map, samples it with `perf record`, and prints the guest's heaviest functions,
# the split between guest code and host, and the host calls of one hit. Asserts nothing.
# KCPEP_PROFILE_CASE=dpop: DPoP hits instead (20,000, each with a proof of its own; the host
# harness checks their ES256 signatures natively, as Envoy's verify_signature does).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "profile: needs perf (Debian: apt-get install linux-perf)" >&2; exit 1; }
KCPEP_WASM_OPT=0 CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR_WASM=target/wasm-profile \
  scripts/build-wasm.sh Cargo.toml dist/keycloak_pep_profile.wasm
cargo test --release --features abi --test abi --no-run 2>/dev/null
BIN=$(cargo test --release --features abi --test abi --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\/deps\/abi-[^"]*\)".*/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "profile: cannot find the ABI test binary" >&2; exit 1; }
mkdir -p results
case "${KCPEP_PROFILE_CASE:-hit}" in
  hit) CALLS=a_memo_hit_makes_only_the_host_calls_it_needs PROFILE=hit_path_profile ;;
  dpop) CALLS=a_dpop_hit_makes_only_the_host_calls_it_needs PROFILE=dpop_hit_path_profile ;;
  *) echo "profile: KCPEP_PROFILE_CASE is hit or dpop" >&2; exit 1 ;;
esac
DATA=results/profile-${KCPEP_PROFILE_CASE:-hit}.data
export KCPEP_WASM=dist/keycloak_pep_profile.wasm
"$BIN" "$CALLS" --exact --nocapture 2>&1 | grep -E '^(memo hit|dpop hit|finish):' || true
KCPEP_PERFMAP=1 perf record -q -F 2000 -g -o "$DATA" "$BIN" "$PROFILE" --exact --ignored --nocapture 2>&1 \
  | grep -E '^profile:' || true
echo "profile: samples by where they ran ([JIT] = the module's compiled code)"
# `head` closes the pipe before perf has written everything: not a failure of the profile
report() { perf report -i "$DATA" --stdio -g none "$@" 2>/dev/null || true; }
report --no-children --sort dso | { grep -E '^ +[0-9]' | head -6 || true; }
JIT=$(report --no-children --sort dso | { grep -o '\[JIT\] tid [0-9]*' | head -1 || true; })
top() { grep -E '^ +[0-9]' | head -"$1" | sed -E 's/ +$//' | cut -c1-160 || true; }
echo "profile: the module's heaviest functions (share of all samples)"
report --no-children --dso "$JIT" --sort symbol | top 25
echo "profile: the module's functions with what they call (inclusive share of all samples; configure included)"
report --children --dso "$JIT" --sort symbol | top 40
