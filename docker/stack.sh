#!/usr/bin/env bash
# The test stack of scripts/stack.sh, run from envoy/docker-compose.yaml (project keycloak-pep) on a
# Docker engine with host networking (docker/dockerd.sh), with the same interface:
#   docker/stack.sh up                 dist/kcpep-policies.jar, then `compose up -d`, then wait until every
#                                      readiness URL answers (no-op if all are up already)
#   docker/stack.sh down               `compose down`: containers removed (Keycloak's database with them)
#   docker/stack.sh status             the containers and their readiness URLs
#   docker/stack.sh stop-keycloak | start-keycloak | restart-keycloak
#                                      stop / start only the Keycloak container, keeping its database
#   docker/stack.sh restart-envoy      restart only Envoy (a rebuilt .wasm, an edited envoy.yaml)
#   docker/stack.sh test -- CMD...     up, run CMD with the KCPEP_* variables scripts/stack.sh exports
#                                      (KCPEP_STACK = this script), then down unless it was up before
# Needs: the images (docker/build-images.sh), a daemon (docker/dockerd.sh start), dist/keycloak_pep.wasm
# (make wasm), docker-compose 1.29 or `docker compose` v2.
# Envoy's output is copied to .run/envoy.log (tests/e2e.rs and tests/hostile.rs read it there, as with
# the native stack) by a `docker logs -f` this script starts and stops.
# Environment: KC_READY_TIMEOUT (600 s: a first start builds Keycloak with the provider jar),
#   KCPEP_DOCKER_PORT_OFFSET=N (development only): run a copy of the compose file, envoy.yaml and the
#   realms with every port moved up by N (from .run/docker-offset-N/), next to a stack on the usual
#   ports. A few tests name port 10000 themselves and fail on such a copy.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SELF="$ROOT/docker/stack.sh"
. "$ROOT/docker/lib.sh"

PROJECT=keycloak-pep
OFFSET=${KCPEP_DOCKER_PORT_OFFSET:-0}
RUN="$ROOT/.run"
WASM="$ROOT/dist/keycloak_pep.wasm"
JAR="$ROOT/dist/kcpep-policies.jar"
COMPOSE_FILE="$ROOT/envoy/docker-compose.yaml"
LOG_PID="$RUN/docker-envoy-log.pid"
ENVOY_LOG="$RUN/envoy.log"
KC_READY_TIMEOUT=${KC_READY_TIMEOUT:-600}
READY_TIMEOUT=${READY_TIMEOUT:-30}

# The ports of envoy/docker-compose.yaml and envoy/envoy.yaml (scripts/stack.sh's).
BASE_PORTS=(8180 9181 8081 8082 8083 10000 10001 9901 8543 10443)
p() { echo $(($1 + OFFSET)); }
KC_URL="http://127.0.0.1:$(p 8180)"
ECHO_URL="http://127.0.0.1:$(p 8081)"
CLAIMS_URL="http://127.0.0.1:$(p 8082)"
FAULTS_URL="http://127.0.0.1:$(p 8083)"
ENVOY_URL="http://127.0.0.1:$(p 10000)"
ENVOY_RAW_URL="http://127.0.0.1:$(p 10001)"
ENVOY_ADMIN_URL="http://127.0.0.1:$(p 9901)"
KC_TLS_URL="https://127.0.0.1:$(p 8543)"
ENVOY_TLS_URL="https://127.0.0.1:$(p 10443)"
PKI="$RUN/pki"

say() { echo "docker-stack: $*"; }
warn() { echo "docker-stack: $*" >&2; }
die() { echo "docker-stack: ERROR: $*" >&2; exit 1; }

if [ "$OFFSET" != 0 ]; then
  [ "$OFFSET" -gt 0 ] 2>/dev/null || die "KCPEP_DOCKER_PORT_OFFSET must be a positive number"
  PROJECT="keycloak-pep-offset-$OFFSET"
fi

compose() {
  if command -v docker-compose >/dev/null 2>&1; then
    docker-compose --ansi never -p "$PROJECT" -f "$COMPOSE_FILE" "$@"
  elif docker compose version >/dev/null 2>&1; then
    docker compose --ansi never -p "$PROJECT" -f "$COMPOSE_FILE" "$@"
  else
    die "neither docker-compose nor 'docker compose' is installed (apt-get install docker-compose)"
  fi
}

# KCPEP_DOCKER_PORT_OFFSET: the same files with the ports moved, the mounts made absolute.
make_offset_copy() {
  local dir="$RUN/docker-offset-$OFFSET/envoy" f port exprs=()
  mkdir -p "$dir/keycloak"
  for port in "${BASE_PORTS[@]}"; do
    exprs+=(-e "s/\\b$port\\b/$(p "$port")/g")
  done
  sed "${exprs[@]}" \
    -e "s|\\./keycloak/\\([a-z-]*realm.json\\)|$dir/keycloak/\\1|" \
    -e "s|\\./envoy.yaml|$dir/envoy.yaml|" \
    -e "s|\\.\\./|$ROOT/|" envoy/docker-compose.yaml >"$dir/docker-compose.yaml"
  sed "${exprs[@]}" envoy/envoy.yaml >"$dir/envoy.yaml"
  for f in envoy/keycloak/*.json; do sed "${exprs[@]}" "$f" >"$dir/keycloak/${f##*/}"; done
  COMPOSE_FILE="$dir/docker-compose.yaml"
}
[ "$OFFSET" = 0 ] || make_offset_copy

ready() { curl -sf -o /dev/null --max-time 3 "$1"; }

# name readiness-URL pairs, in the order they are waited for
CHECKS=(
  keycloak "$KC_URL/realms/bank/.well-known/openid-configuration"
  upstream "$ECHO_URL/healthz"
  claims "$CLAIMS_URL/healthz"
  faults "$FAULTS_URL/faults"
  envoy "$ENVOY_ADMIN_URL/ready"
)

all_ready() {
  local i
  for ((i = 1; i < ${#CHECKS[@]}; i += 2)); do ready "${CHECKS[i]}" || return 1; done
}

container_id() { compose ps -q "$1" 2>/dev/null | head -1; }

running() { # $1 service: its container is running
  local id; id=$(container_id "$1")
  [ -n "$id" ] && [ "$(docker inspect -f '{{.State.Running}}' "$id" 2>/dev/null)" = true ]
}

wait_ready() { # $1 service, $2 URL, $3 timeout (s)
  local name=$1 url=$2 timeout=$3 t0=$SECONDS
  while ! ready "$url"; do
    if ! running "$name"; then
      warn "$name's container is not running; its last lines:"
      compose logs --no-color --tail 40 "$name" >&2 || true
      return 1
    fi
    if [ $((SECONDS - t0)) -ge "$timeout" ]; then
      warn "$name not ready after $timeout s ($url); its last lines:"
      compose logs --no-color --tail 40 "$name" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  say "$name ready after $((SECONDS - t0)) s ($url)"
}

# Only start over ports nobody holds (the native stack, another compose project).
check_ports_free() {
  local port busy=()
  for port in "${BASE_PORTS[@]}"; do
    (exec 3<>"/dev/tcp/127.0.0.1/$(p "$port")") 2>/dev/null && busy+=("$(p "$port")")
  done
  [ ${#busy[@]} = 0 ] || die "ports ${busy[*]} are in use by something this project did not start (scripts/stack.sh's stack?)"
}

# Envoy's output to .run/envoy.log, where the tests read it.
start_envoy_log() {
  stop_envoy_log
  local id; id=$(container_id envoy)
  [ -n "$id" ] || die "no envoy container"
  mkdir -p "$RUN"
  : >"$ENVOY_LOG"
  setsid "$DOCKER" logs -f "$id" >>"$ENVOY_LOG" 2>&1 </dev/null &
  echo $! >"$LOG_PID"
}
stop_envoy_log() {
  local pid
  [ -s "$LOG_PID" ] || return 0
  pid=$(cat "$LOG_PID")
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'logs -f'; then
    kill "$pid" 2>/dev/null || true
  fi
  rm -f "$LOG_PID"
}

# As scripts/stack.sh: a fresh Keycloak answers its first token requests slowly; ask once for each
# kind the filter will before anything is judged.
warm_keycloak() {
  local tok="$KC_URL/realms/authz-test/protocol/openid-connect/token" token
  curl -s -o /dev/null --max-time 60 -d grant_type=client_credentials \
    -d client_id=resource-server-test -d client_secret=secret "$tok" || true
  token=$(curl -s --max-time 60 -d grant_type=password -d client_id=public-client-test \
    -d username=marta -d password=password "$tok" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p') || true
  if [ -n "$token" ]; then
    curl -s -o /dev/null --max-time 60 -H "Authorization: Bearer $token" \
      -d grant_type=urn:ietf:params:oauth:grant-type:uma-ticket -d audience=resource-server-test \
      -d response_mode=decision "$tok" || true
  fi
  say "keycloak warmed up (token, password and UMA grants)"
}

cmd_up() {
  if all_ready && running envoy; then say "already up; nothing to do"; return 0; fi
  command -v curl >/dev/null || die "curl is required"
  docker info >/dev/null 2>&1 || die "no Docker daemon (docker/dockerd.sh start)"
  [ -s "$WASM" ] || die "$WASM is missing: make wasm"
  python3 "$ROOT/scripts/policies-jar.py" envoy/keycloak/policies "$JAR" || die "could not build $JAR"
  "$ROOT/scripts/test-pki.sh" "$PKI" || die "could not make the test CA in $PKI"
  [ -n "$(compose ps -q 2>/dev/null)" ] || check_ports_free
  local t0=$SECONDS i
  # Envoy waits for Keycloak's healthcheck (depends_on: service_healthy), so this returns when
  # Keycloak answers the bank realm's discovery and Envoy has been started.
  say "compose -p $PROJECT -f $COMPOSE_FILE up -d (Keycloak first: a first start takes minutes)"
  compose up -d || { compose logs --no-color --tail 40 keycloak >&2 || true; die "compose up failed"; }
  for ((i = 0; i < ${#CHECKS[@]}; i += 2)); do
    wait_ready "${CHECKS[i]}" "${CHECKS[i + 1]}" "$([ "${CHECKS[i]}" = keycloak ] && echo "$KC_READY_TIMEOUT" || echo "$READY_TIMEOUT")" \
      || die "${CHECKS[i]} did not become ready"
  done
  warm_keycloak
  start_envoy_log
  say "all ready in $((SECONDS - t0)) s"
  cat <<EOF
docker-stack: up (compose project $PROJECT)
  Keycloak  $KC_URL  (admin/admin; realms bank, authz-test)
  echo      $ECHO_URL    claims $CLAIMS_URL    faults $FAULTS_URL
  Envoy     $ENVOY_URL  (raw $ENVOY_RAW_URL), admin $ENVOY_ADMIN_URL; log $ENVOY_LOG
  logs:     docker-compose -p $PROJECT -f $COMPOSE_FILE logs SERVICE
  stop:     $([ "$OFFSET" = 0 ] || echo "KCPEP_DOCKER_PORT_OFFSET=$OFFSET ")docker/stack.sh down
EOF
}

cmd_down() {
  stop_envoy_log
  compose down --timeout 30 --remove-orphans
}

cmd_status() {
  local i rc=0
  compose ps
  for ((i = 0; i < ${#CHECKS[@]}; i += 2)); do
    if ready "${CHECKS[i + 1]}"; then s=ready; else s="NOT ready"; rc=1; fi
    printf 'docker-stack: %-9s %s (%s)\n' "${CHECKS[i]}" "$s" "${CHECKS[i + 1]}"
  done
  return $rc
}

cmd_stop_keycloak() { compose stop --timeout 30 keycloak; }

cmd_start_keycloak() {
  compose start keycloak
  wait_ready keycloak "${CHECKS[1]}" "$KC_READY_TIMEOUT" || die "Keycloak did not become ready"
}

cmd_restart_envoy() {
  compose restart --timeout 30 envoy
  wait_ready envoy "${CHECKS[9]}" "$READY_TIMEOUT" || die "Envoy did not become ready"
  start_envoy_log
}

cmd_test() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: docker/stack.sh test -- CMD [ARGS...]"
  local was_up=0 rc=0
  if all_ready; then was_up=1; fi
  if [ "$was_up" = 0 ]; then
    trap 'rc=$?; trap - EXIT; cmd_down || true; exit $rc' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  cmd_up
  export KCPEP_KEYCLOAK_URL="$KC_URL"
  export KCPEP_ENVOY_URL="$ENVOY_URL"
  export KCPEP_ENVOY_RAW_URL="$ENVOY_RAW_URL"
  export KCPEP_ENVOY_ADMIN="$ENVOY_ADMIN_URL"
  export KCPEP_UPSTREAM_URL="$ECHO_URL"
  export KCPEP_CLAIMS_URL="$CLAIMS_URL"
  export KCPEP_FAULTS_URL="$FAULTS_URL"
  export KCPEP_STACK="$SELF"
  export KCPEP_KEYCLOAK_TLS_URL="$KC_TLS_URL"
  export KCPEP_ENVOY_TLS_URL="$ENVOY_TLS_URL"
  export KCPEP_PKI="$PKI"
  export KCPEP_DOCKER_PORT_OFFSET="$OFFSET" DOCKER
  say "running: $*"
  "$@" || rc=$?
  [ "$was_up" = 0 ] || say "the stack was up before 'test': leaving it running"
  say "command exited with status $rc"
  exit "$rc"
}

usage() { sed -n '2,22p' "$SELF" | sed 's/^# \{0,1\}//'; }

sub=${1:-}
[ $# -gt 0 ] && shift
case "$sub" in
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
