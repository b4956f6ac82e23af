#!/usr/bin/env bash
# make soak: a production-like load through the filter for KCPEP_SOAK_SECONDS (600), on a stack of
# its own: Keycloak http://127.0.0.1:8380 (management 9380; a copy of the stack's installation under
# .cache/soak/, its own database), the echo upstream on 8092, Envoy on 10300 (admin 9931,
# --base-id 79, --concurrency 2). The driver is bench/soak.py (docs/soak.md); pids and logs under
# .run/soak/, CSV, JSON and PNG under results/. Exits non-zero when a pass criterion fails.
#
# Environment: KCPEP_SOAK_SECONDS (600), KCPEP_SOAK_USERS (1000), KCPEP_SOAK_RPS (200),
#   KCPEP_SOAK_CONNECTIONS (8), KCPEP_SOAK_TOKEN_LIFESPAN (120), KCPEP_SOAK_SEED,
#   KCPEP_KEYCLOAK_VERSION (26.7.3), KC_READY_TIMEOUT (300).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUN="$ROOT/.run/soak"
PY="$ROOT/.cache/venv/bin/python"

die() { echo "soak: ERROR: $*" >&2; exit 1; }

# Whatever happens to the driver, nothing it started outlives this script: each pid file names a
# process group leader started by bench/soak.py (setsid); only those groups are signalled.
cleanup() {
  local f pid
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
      && [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ] \
      && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -e keycloak -e envoy -e echo_upstream; then
      echo "soak: stopping leftover process group $pid ($(basename "$f" .pid))" >&2
      kill -TERM -- "-$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  rm -rf "$RUN/round"   # the round files hold tokens
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "soak: installing wrk (Debian package)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    die "needs wrk (Debian: apt-get install wrk)"
  fi
fi
[ -s dist/keycloak_pep.wasm ] || die "dist/keycloak_pep.wasm is missing: make wasm (make soak builds it)"

# Keycloak, Envoy and the venv as the test stack installs them (idempotent); its JDK choice too.
install_out=$(scripts/stack.sh install) || { echo "$install_out" >&2; die "scripts/stack.sh install failed"; }
java_home=$(sed -n 's/^stack: JDK: JAVA_HOME=\(.*\) (.*$/\1/p' <<<"$install_out" | head -1)
[ -n "$java_home" ] && [ -x "$java_home/bin/java" ] || { echo "$install_out" >&2; die "could not tell which JDK scripts/stack.sh picked"; }
export KCPEP_SOAK_JAVA_HOME="$java_home"

[ -x "$PY" ] || die "$PY is missing (scripts/stack.sh install creates the venv)"
for mod in matplotlib:matplotlib yaml:pyyaml; do
  if ! "$PY" -c "import ${mod%%:*}" 2>/dev/null; then
    echo "soak: installing ${mod##*:} into the venv"
    "$PY" -m pip install -q "${mod##*:}" || die "could not install ${mod##*:} into the venv"
  fi
done

mkdir -p "$RUN"
"$PY" -u bench/soak.py "$@"
