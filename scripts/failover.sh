#!/usr/bin/env bash
# make failover: two Keycloak nodes of one cluster on a real PostgreSQL behind the keycloak-pep
# filter in Envoy; under load, one node is killed (-9) and restarted, then both are stopped.
# The driver is bench/failover.py; docs/failover.md explains what it runs and prints.
#
# Usage: scripts/failover.sh            (make failover builds dist/keycloak_pep.wasm first)
# Environment: KCPEP_FAILOVER_PHASE_SECONDS (10), KCPEP_FAILOVER_KILL_HOLD (5),
#   KCPEP_FAILOVER_UNCACHED_RATE (6/s), KCPEP_FAILOVER_TRICKLE_RATE (1/s), KCPEP_FAILOVER_CACHED_RATE
#   (30/s), KCPEP_FAILOVER_TIMEOUT_MS (the filter's callout timeout; unset: 2000), KC_READY_TIMEOUT (240 s),
#   KCPEP_PG_BIN (PostgreSQL's bin directory), KCPEP_KEYCLOAK_VERSION (26.7.3, as the test stack).
# Ports (none of the test stack's or the benchmark's): PostgreSQL 55432, Keycloak 8280/8281
# (management 9280/9281, JGroups 7900/7901 and 7950/7951), echo 8091, Envoy 10200 (admin 9921).
# Data under .cache/failover/, logs and pid files under .run/failover/; everything started is
# stopped on exit, failure or interrupt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUN="$ROOT/.run/failover"
PY="$ROOT/.cache/venv/bin/python"
mkdir -p "$RUN" "$ROOT/.cache/failover"

say() { echo "failover: $*"; }
die() { echo "failover: ERROR: $*" >&2; exit 1; }

# What the driver started and could not stop itself (it was killed): its pid files name the
# process, how to signal it, and what its command line holds (so a reused pid is left alone).
cleanup() {
  local f pid mode sig marker target i
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    read -r pid mode sig marker <"$f" || true
    rm -f "$f"
    [ -n "${pid:-}" ] && kill -0 "$pid" 2>/dev/null || continue
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || continue
    target=$pid
    [ "$mode" = group ] && target="-$pid"
    say "stopping leftover $(basename "$f" .pid) (pid $pid)"
    kill "-${sig#SIG}" -- "$target" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 -- "$target" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "$target" 2>/dev/null || true
  done
}

child=
forward() { if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi; }
trap cleanup EXIT
trap forward INT TERM HUP

cleanup   # a previous run killed before its own cleanup

# PostgreSQL (Debian's server package; the harness runs its own cluster on 55432, never the
# package's service).
if [ -z "${KCPEP_PG_BIN:-}" ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing PostgreSQL (Debian's postgresql package)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    die "PostgreSQL's server is needed (Debian: apt-get install postgresql), or set KCPEP_PG_BIN"
  fi
fi
if [ "$(id -u)" = 0 ]; then
  command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) is needed to run PostgreSQL as the postgres user"
  id postgres >/dev/null 2>&1 || die "no 'postgres' system user to run PostgreSQL as (Debian's postgresql package creates it)"
fi

# Keycloak, Envoy and the JDK exactly as the test stack installs and picks them.
scripts/stack.sh install >"$RUN/install.log" 2>&1 || { cat "$RUN/install.log" >&2; die "scripts/stack.sh install failed"; }
JAVA_HOME_PICKED=$(sed -n 's/^stack: JDK: JAVA_HOME=\([^ ]*\) .*/\1/p' "$RUN/install.log" | tail -1)
[ -n "$JAVA_HOME_PICKED" ] || { cat "$RUN/install.log" >&2; die "could not tell which JDK scripts/stack.sh picked"; }
[ -x "$PY" ] || die "$PY is missing (scripts/stack.sh install creates it)"
[ -s dist/keycloak_pep.wasm ] || die "dist/keycloak_pep.wasm is missing: make wasm (make failover builds it)"

export KCPEP_FAILOVER_JAVA_HOME="$JAVA_HOME_PICKED"
"$PY" -u bench/failover.py "$@" &
child=$!
while :; do
  set +e
  wait "$child"
  rc=$?
  set -e
  kill -0 "$child" 2>/dev/null || break   # wait returned for a signal while the driver cleans up
done
exit "$rc"
