#!/usr/bin/env bash
# Start / stop a Docker daemon by hand (this machine has no systemd to do it), for the images in
# docker/ and envoy/docker-compose.yaml.
#   docker/dockerd.sh start | stop | status
# Why these flags:
#   --iptables=false --ip6tables=false --bridge=none
#       no docker0 bridge, no NAT rules, no private addresses: every container runs with
#       --network host (network_mode: host in the compose file), so 127.0.0.1 means the same everywhere.
#   --storage-driver overlay2 on /var/lib/docker (ext4): works on this kernel; vfs would copy every
#       layer in full. DOCKERD_STORAGE_DRIVER=vfs if overlay ever fails on some other machine.
#   --data-root outside the repo on purpose (images are GBs; the repo tree is for sources).
# The daemon itself runs at nice 19 / idle I/O class: image builds and container starts must not take
# CPU from whatever else this 2-core machine is doing (its children, the containers, inherit the nice
# value too, so a load test *inside* containers should start dockerd without it: DOCKERD_NICE=0).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # docker = /usr/bin/docker (Debian's client) when present

DATA_ROOT=${DOCKERD_DATA_ROOT:-/var/lib/docker}
DRIVER=${DOCKERD_STORAGE_DRIVER:-overlay2}
LOG=${DOCKERD_LOG:-/var/log/kcpep-dockerd.log}
PIDFILE=/run/kcpep-dockerd.pid
NICE=${DOCKERD_NICE:-19}

running() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
  start)
    if running; then echo "dockerd: already running (pid $(cat "$PIDFILE"))"; exit 0; fi
    command -v dockerd >/dev/null || { echo "dockerd: not installed (apt-get install docker.io)" >&2; exit 1; }
    nohup nice -n "$NICE" ionice -c3 dockerd \
      --iptables=false --ip6tables=false --bridge=none \
      --storage-driver "$DRIVER" --data-root "$DATA_ROOT" \
      --pidfile "$PIDFILE" >>"$LOG" 2>&1 </dev/null &
    # the socket answers within a few seconds; `docker info` is the real readiness check
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && { echo "dockerd: up (pid $(cat "$PIDFILE"), log $LOG)"; exit 0; }
      sleep 0.5
    done
    echo "dockerd: did not come up in 30 s, see $LOG" >&2; tail -20 "$LOG" >&2; exit 1
    ;;
  stop)
    running || { echo "dockerd: not running"; exit 0; }
    if [ -n "$(docker ps -q 2>/dev/null)" ]; then
      echo "dockerd: containers still running, stop them first (docker ps):" >&2; docker ps >&2; exit 1
    fi
    pid=$(cat "$PIDFILE"); kill "$pid"   # SIGTERM: dockerd stops its own containerd child cleanly
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { echo "dockerd: stopped"; exit 0; }; sleep 0.5; done
    echo "dockerd: pid $pid still alive after 30 s" >&2; exit 1
    ;;
  status)
    if running; then echo "dockerd: running (pid $(cat "$PIDFILE"))"; docker info --format '{{.ServerVersion}} {{.Driver}} {{.CgroupVersion}}'; else echo "dockerd: not running"; exit 1; fi
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
