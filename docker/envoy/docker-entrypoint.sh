#!/bin/sh
# Like the upstream image's entrypoint: arguments starting with "-" are Envoy's, anything else is a
# command. The image runs as root, so upstream's ENVOY_UID / ENVOY_GID switching is not needed.
case "${1:-}" in -*) set -- envoy "$@" ;; esac
exec "$@"
