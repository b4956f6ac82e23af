# Sourced by the scripts in docker/ (not run): which Docker client they use.
# Debian's docker.io puts its client at /usr/bin/docker (20.10, API 1.41, the engine's own). Another
# client earlier on PATH (a newer static one in /usr/local/bin, say) is not the one the engine was
# tested with: /usr/bin/docker is preferred; DOCKER=/path/to/docker overrides.
if [ -z "${DOCKER:-}" ]; then
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker || true); fi
fi
docker() {
  [ -n "$DOCKER" ] || { echo "docker: no Docker client installed (apt-get install docker.io)" >&2; return 127; }
  command "$DOCKER" "$@"
}
