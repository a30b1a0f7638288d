#!/usr/bin/env bash
# Serve the packaged model with the real vLLM CPU server (OpenAI-compatible) on 127.0.0.1:PORT.
#   scripts/serve-vllm.sh [PORT]      (default 8000; `make vllm` installs the venv first)
set -euo pipefail
PORT="${1:-8000}"
CACHE="${TOOLSIM_CACHE_DIR:-$HOME/.cache/toolsim}"
VENV="${TOOLSIM_VLLM_VENV:-$CACHE/vllm-venv}"
MODEL="${TOOLSIM_MODEL_DIR:-$CACHE/models/SmolLM2-135M-Instruct}"
[[ -x "$VENV/bin/python" ]] || { echo "no vLLM venv at $VENV: run make vllm" >&2; exit 1; }
[[ -f "$MODEL/config.json" ]] || { echo "no model at $MODEL: run toolsim model fetch" >&2; exit 1; }
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
  --model "$MODEL" --served-model-name "${TOOLSIM_VLLM_MODEL:-smollm2}" \
  --host 127.0.0.1 --port "$PORT" --dtype bfloat16 --max-model-len 2048 \
  --enable-auto-tool-choice --tool-call-parser hermes \
  --uvicorn-log-level warning "${@:2}"
