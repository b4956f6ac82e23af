#!/usr/bin/env bash
# make size: where the module's bytes go. Builds the filter as `make wasm` does but keeps function
# names (wasm-opt -g), then reads it with twiggy (installed with cargo when missing: a maintained
# wasm size profiler) and prints the bytes per crate (the filter's own per top module) and the
# largest functions. Names and sizes are of the optimized code; the name section itself is left
# out of the totals. Prints figures, asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
TWIGGY=$(command -v twiggy || echo "$HOME/.cargo/bin/twiggy")
if [ ! -x "$TWIGGY" ]; then
  echo "size: installing twiggy with cargo"
  cargo install -q --locked twiggy
fi
OUT=target/size/keycloak_pep_names.wasm
mkdir -p target/size
KCPEP_WASM_OPT=0 CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR_WASM=target/wasm-names \
  scripts/build-wasm.sh Cargo.toml "$OUT" >target/size/build.log 2>&1 || { tail -20 target/size/build.log; exit 1; }
wasm-opt -O3 -g --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types "$OUT" -o "$OUT.opt"
"$TWIGGY" top -n 1000000 --format csv "$OUT.opt" > target/size/top.csv
python3 - target/size/top.csv "${KCPEP_SIZE_TOP:-25}" <<'PY'
import collections, csv, re, sys
rows = list(csv.DictReader(open(sys.argv[1])))
top = int(sys.argv[2])
by_crate, count = collections.Counter(), collections.Counter()
functions = []
def crate_of(name):
    # the first crate a (possibly generic) item names: where its code comes from
    m = re.search(r"([a-z_][a-z0-9_]*)\[[0-9a-f]{1,16}\]::", name)
    if not m:
        return "data" if name.startswith("data segment") else "other (libc, allocator, glue)"
    if m.group(1) == "keycloak_pep":
        sub = re.search(r"keycloak_pep\[[0-9a-f]+\]::([a-z_]+)", name)
        return "keycloak_pep::" + (sub.group(1) if sub else "?")
    return m.group(1)
for r in rows:
    name, size = r["Name"], int(r["ShallowSize"])
    if name.startswith("custom section") or "names\" subsection" in name or name.startswith("\"function names"):
        continue
    c = crate_of(name)
    by_crate[c] += size
    count[c] += 1
    functions.append((size, name))
total = sum(by_crate.values())
print(f"size: {total} bytes of code and data (names left out)")
print(f"{'bytes':>8} {'share':>6} {'items':>6}  crate")
for c, b in by_crate.most_common():
    print(f"{b:8d} {100 * b / total:5.1f}% {count[c]:6d}  {c}")
print(f"size: the {top} largest items")
hashes = re.compile(r"\[[0-9a-f]{1,16}\]")
for size, name in sorted(functions, reverse=True)[:top]:
    short = hashes.sub("", name)[:150]
    print(f"{size:8d}  {short}")
PY
