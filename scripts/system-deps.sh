#!/usr/bin/env bash
# Debian packages the tests and benchmarks use: redis-server (real Redis in fixtures), wrk (load),
# bubblewrap (the sandbox of the live `python` tool); and, where no Docker daemon answers, the
# rootful podman stack that scripts/compose-engine.sh serves the Docker API with (the `compose`
# test layer), debootstrap for its stand-in base images.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if [[ "${TOOLSIM_WITH_PODMAN:-}" == 1 ]] || ! timeout 10 docker info >/dev/null 2>&1; then
  for tool in podman runc fuse-overlayfs newuidmap slirp4netns debootstrap iptables; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] || missing+=("$tool")
  done
  [[ -x /usr/lib/podman/netavark ]] || missing+=(netavark aardvark-dns)
  missing=("${missing[@]/newuidmap/uidmap}")
fi
if ((${#missing[@]} == 0)); then
  echo "[system-deps] redis-server, wrk, bwrap (and the container engine) present"
  exit 0
fi
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
echo "[system-deps] installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
