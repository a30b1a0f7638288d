#!/usr/bin/env bash
# Debian packages the tests and benchmarks use: redis-server (real Redis in fixtures), wrk (load),
# bubblewrap (the sandbox of the live `python` tool).
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if ((${#missing[@]} == 0)); then
  echo "[system-deps] redis-server, wrk and bwrap present"
  exit 0
fi
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
echo "[system-deps] installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
